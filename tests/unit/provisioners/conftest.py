"""Real servers for the fetchers: HTTPS with a throwaway CA, a fake HF hub, S3, a registry."""

from __future__ import annotations

import os

# huggingface_hub reads these at import; the fake hub speaks plain HTTP, never Xet.
os.environ.setdefault("HF_HUB_DISABLE_XET", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trustme

from llama_orch.catalog import CatalogStore
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.fetch.https import HttpsFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy
from tests.support.file_server import FileServerState, file_server
from tests.support.threaded_server import serve_in_thread

OPEN = OutboundPolicy(
    allow_outbound=True, allowed_schemes=("file", "http", "https", "hf", "s3", "oci")
)


@dataclass
class HttpsSite:
    base: str
    state: FileServerState
    context: ssl.SSLContext
    ca_file: Path


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_site(tmp_path: Path, tls_ca: trustme.CA) -> Iterator[HttpsSite]:
    cert = tls_ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    tls_ca.configure_trust(context)
    ca_file = tmp_path / "ca.pem"
    tls_ca.cert_pem.write_to_path(str(ca_file))
    state = FileServerState()
    with serve_in_thread(file_server(state), certfile=certfile, keyfile=keyfile) as port:
        yield HttpsSite(f"https://127.0.0.1:{port}/files", state, context, ca_file)


@pytest.fixture
def store(tmp_path: Path) -> CatalogStore:
    return CatalogStore(tmp_path / "catalog")


def https_provisioner(store: CatalogStore, site: HttpsSite, **kw: object) -> ModelProvisioner:
    fetcher = HttpsFetcher(verify=site.context, backoff_s=0.0)
    return ModelProvisioner(
        store,
        {"file": FileFetcher(), "https": fetcher},
        outbound=kw.pop("outbound", OPEN),  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )
