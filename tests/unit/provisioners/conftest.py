"""Real servers for the fetchers: HTTPS with a throwaway CA, a fake HF hub, S3, a registry."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trustme

from llama_orch.catalog import CatalogStore
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.fetch.https import HttpsFetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy
from tests.support.https_site import HttpsSite, serve_https_site

OPEN = OutboundPolicy(
    allow_outbound=True, allowed_schemes=("file", "http", "https", "hf", "s3", "oci")
)


@pytest.fixture(scope="session")
def tls_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def https_site(tmp_path: Path, tls_ca: trustme.CA) -> Iterator[HttpsSite]:
    with serve_https_site(tmp_path, tls_ca) as site:
        yield site


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
