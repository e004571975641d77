"""Model catalog: pull throughput, digest verification, and ``locate`` on a large catalog.

``python -m bench catalog``. Targets (issue 10):

- a pull from a local HTTPS server and from a local S3 server runs at >= 0.8x a raw download of
  the same bytes with the same client library (httpx streaming to a file; boto3 ``get_object``
  streamed to a file); the pull adds staging, the sha256 check, the rename and the index write;
- digest verification (``verify.sha256_file``) runs at >= 0.9x ``hashlib.file_digest``;
- ``locate`` on a 10,000-entry catalog takes <= 1 ms (median).

The servers run in their own processes (uvicorn serving the file over TLS from a throwaway CA,
moto's S3 server), so they do not share this process's GIL. Best of several alternating rounds.
"""

from __future__ import annotations

import hashlib
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

from llama_orch.catalog import CatalogStore, ModelEntry, parse_ref
from llama_orch.catalog.verify import sha256_file
from llama_orch.provisioners.fetch.https import HttpsFetcher
from llama_orch.provisioners.fetch.s3 import S3Fetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy

MIB = 1024 * 1024
SIZE = 256 * MIB
ROUNDS = 5
ENTRIES = 10_000
OPEN = OutboundPolicy(True, (), ("https", "s3"))

_HTTPS_SERVER = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.staticfiles import StaticFiles
app = Starlette(routes=[Mount("/files", StaticFiles(directory=sys.argv[1]))])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            ssl_certfile=sys.argv[3], ssl_keyfile=sys.argv[4])
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait(url: str, verify: ssl.SSLContext | bool = True) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            httpx.get(url, verify=verify, timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise RuntimeError(f"{url} never answered")


@contextmanager
def _process(args: list[str]) -> Iterator[None]:
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        yield
    finally:
        proc.terminate()
        proc.wait(10)


def _best(rounds: int, run: Callable[[], None]) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return min(times)


def _rate(seconds: float) -> float:
    return SIZE / MIB / seconds


def _report(name: str, ours: float, raw: float, target: float) -> None:
    ratio = raw / ours
    verdict = "ok" if ratio >= target else "BELOW TARGET"
    print(
        f"{name:<28} pull {_rate(ours):8.1f} MiB/s  raw {_rate(raw):8.1f} MiB/s  "
        f"ratio {ratio:.2f} (target >= {target}) {verdict}"
    )


def bench_https(work: Path, payload: Path, digest: str) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    certfile, keyfile = work / "cert.pem", work / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    context = ssl.create_default_context()
    ca.configure_trust(context)
    port = _free_port()
    server = [sys.executable, "-c", _HTTPS_SERVER, str(payload.parent), str(port)]
    with _process([*server, str(certfile), str(keyfile)]):
        url = f"https://127.0.0.1:{port}/files/{payload.name}"
        _wait(url, context)

        def raw() -> None:
            with (
                httpx.Client(verify=context) as client,
                client.stream("GET", url) as response,
                (work / "raw.bin").open("wb") as out,
            ):
                for chunk in response.iter_bytes():
                    out.write(chunk)

        def pull() -> None:
            store = CatalogStore(work / "https-catalog")
            prov = ModelProvisioner(store, {"https": HttpsFetcher(verify=context)}, outbound=OPEN)
            prov.ensure_present_str(url, digest)
            shutil.rmtree(store.root)

        ours, base = _alternate(pull, raw)
        _report("https (httpx)", ours, base, 0.8)


def bench_s3(work: Path, payload: Path, digest: str) -> None:
    import boto3

    port = _free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
    with _process(server):
        _wait(endpoint)
        client: Any = boto3.client(
            "s3",
            endpoint_url=endpoint,
            region_name="us-east-1",
            aws_access_key_id="bench",
            aws_secret_access_key="bench",
        )
        client.create_bucket(Bucket="models")
        client.upload_file(str(payload), "models", payload.name)

        def raw() -> None:
            body = client.get_object(Bucket="models", Key=payload.name)["Body"]
            with (work / "raw.bin").open("wb") as out:
                for chunk in body.iter_chunks(MIB):
                    out.write(chunk)

        def pull() -> None:
            store = CatalogStore(work / "s3-catalog")
            fetcher = S3Fetcher(endpoint_url=endpoint, client=client)
            prov = ModelProvisioner(store, {"s3": fetcher}, outbound=OPEN)
            prov.ensure_present_str(f"s3://models/{payload.name}", digest)
            shutil.rmtree(store.root)

        ours, base = _alternate(pull, raw)
        _report("s3 (boto3, moto server)", ours, base, 0.8)


def _alternate(ours: Callable[[], None], raw: Callable[[], None]) -> tuple[float, float]:
    ours_times, raw_times = [], []
    for _ in range(ROUNDS):
        raw_times.append(_best(1, raw))
        ours_times.append(_best(1, ours))
    return min(ours_times), min(raw_times)


def bench_digest(payload: Path) -> None:
    def ours() -> None:
        sha256_file(payload)

    def stdlib() -> None:
        with payload.open("rb") as handle:
            hashlib.file_digest(handle, "sha256")

    mine, base = _alternate(ours, stdlib)
    ratio = base / mine
    verdict = "ok" if ratio >= 0.9 else "BELOW TARGET"
    print(
        f"{'digest (sha256_file)':<28} ours {_rate(mine):8.1f} MiB/s  hashlib "
        f"{_rate(base):8.1f} MiB/s  ratio {ratio:.2f} (target >= 0.9) {verdict}"
    )


def bench_locate(work: Path) -> None:
    store = CatalogStore(work / "big")
    store.ensure_layout()
    target = store.model_dir("hf:org/model-5000") / "m.gguf"
    target.parent.mkdir(parents=True)
    target.write_bytes(b"x")
    entries = {
        f"hf:org/model-{i}": ModelEntry(
            id=f"hf:org/model-{i}",
            ref=f"hf:org/model-{i}",
            local_path=str(target),
            size_bytes=4 * 1024**3,
            digest="sha256:" + "ab" * 32,
            source={"commit": "0" * 40},
        )
        for i in range(ENTRIES)
    }
    store._models.write(entries)
    ref = parse_ref("hf:org/model-5000")
    store.locate(ref)  # the first call parses the index; later calls stat and look up
    samples = []
    for _ in range(2000):
        start = time.perf_counter_ns()
        found = store.locate(ref)
        samples.append(time.perf_counter_ns() - start)
        assert found is not None
    cold = time.perf_counter()
    CatalogStore(work / "big").locate(ref)
    cold_ms = (time.perf_counter() - cold) * 1000
    median_ms = statistics.median(samples) / 1e6
    verdict = "ok" if median_ms <= 1.0 else "BELOW TARGET"
    print(
        f"{'locate (10,000 entries)':<28} median {median_ms * 1000:7.1f} us  p99 "
        f"{sorted(samples)[int(len(samples) * 0.99)] / 1000:7.1f} us  first call (parse) "
        f"{cold_ms:6.1f} ms  (target <= 1 ms) {verdict}"
    )


def _copy(source: Path, target: Path) -> None:
    shutil.copyfile(source, target)


def main() -> None:
    from llama_orch.observability.logging import configure_logging

    configure_logging("pretty", "warning")
    with tempfile.TemporaryDirectory(prefix="bench-catalog-") as tmp:
        work = Path(tmp)
        payload = work / "data" / "model.bin"
        payload.parent.mkdir()
        block = hashlib.sha256(b"seed").digest() * (MIB // 32)
        with payload.open("wb") as out:
            for _ in range(SIZE // MIB):
                out.write(block)
        digest = "sha256:" + sha256_file(payload).value
        copy = _best(ROUNDS, lambda: _copy(payload, work / "copy.bin"))
        print(f"{'file copy (context)':<28} {_rate(copy):8.1f} MiB/s, {SIZE // MIB} MiB payload")
        bench_digest(payload)
        bench_locate(work)
        bench_https(work, payload, digest)
        bench_s3(work, payload, digest)
