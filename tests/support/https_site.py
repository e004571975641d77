"""An HTTPS file server with a certificate from a throwaway CA (trustme)."""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import trustme

from tests.support.file_server import FileServerState, file_server
from tests.support.threaded_server import serve_in_thread


@dataclass
class HttpsSite:
    base: str
    state: FileServerState
    context: ssl.SSLContext
    ca_file: Path


@contextlib.contextmanager
def serve_https_site(directory: Path, ca: trustme.CA) -> Iterator[HttpsSite]:
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = directory / "cert.pem", directory / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    ca_file = directory / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    state = FileServerState()
    with serve_in_thread(file_server(state), certfile=certfile, keyfile=keyfile) as port:
        yield HttpsSite(f"https://127.0.0.1:{port}/files", state, context, ca_file)
