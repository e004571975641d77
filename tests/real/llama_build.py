"""Build a CPU ``llama-server`` from a pinned llama.cpp source, once, into the engine cache.

The source is the llama.cpp copy vendored in the ``llama-cpp-python`` sdist on PyPI (PyPI is
reachable where GitHub may not be), pinned by version and sha256. The build is a CPU build:
it exists only so that ``make test-real`` can check llama-orch against the real llama.cpp wire
protocol, and everything it serves is labelled simulated. The product never builds or launches
a CPU engine (its source provider refuses ``GGML_CUDA=OFF``).

The build lives under ``<engine cache>/llamacpp-cpu/<sha256[:12]>-<flags digest>/`` and is
reused once a build there has succeeded. Run it on its own with
``python -m tests.real.llama_build`` (prints the binary's path).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from llama_orch.provisioners.engine._context import DEFAULT_CACHE_ROOT
from llama_orch.provisioners.engine._fetch import download, sha256_of, unpack, verify
from llama_orch.provisioners.engine._steps import run_step
from llama_orch.provisioners.engine._types import ProvisionError

#: The pinned source: llama-cpp-python's sdist, which vendors llama.cpp under vendor/llama.cpp.
SDIST_VERSION = "0.3.36"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/ec/e9/"
    "e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/"
    f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
)
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"

#: CPU only, no network at build or run time (no curl, no OpenSSL, no prebuilt web UI download),
#: generic x86-64 code (not -march=native) so that every machine runs the same kernels.
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_CUDA=OFF",
    "-DGGML_NATIVE=OFF",
    "-DLLAMA_CURL=OFF",
    "-DLLAMA_OPENSSL=OFF",
    "-DLLAMA_BUILD_SERVER=ON",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DBUILD_SHARED_LIBS=OFF",
)
BUILD_JOBS = os.environ.get("REAL_LLAMA_JOBS", "2")


@dataclass(frozen=True, slots=True)
class RealLlama:
    binary: Path
    #: ``llamacpp-cpu:<sdist version>+<sha256[:12]>``: what the run reports as engine version.
    version: str
    #: Seconds the build took this time; 0 when the cached binary was reused.
    build_s: float


def cache_root() -> Path:
    """``$REAL_LLAMA_CACHE``, else ``<engine cache>/llamacpp-cpu`` (``~/.cache/llama-orch``)."""
    configured = os.environ.get("REAL_LLAMA_CACHE")
    if configured:
        return Path(configured).expanduser()
    return Path(DEFAULT_CACHE_ROOT).expanduser() / "llamacpp-cpu"


def build_dir(root: Path) -> Path:
    flags = hashlib.sha256("\0".join(CMAKE_FLAGS).encode()).hexdigest()[:8]
    return root / f"{SDIST_SHA256[:12]}-{flags}"


def _ca_roots() -> tuple[str, ...]:
    """The system CA bundle and any named by the environment (a proxy's CA, as pip uses)."""
    named = (os.environ.get(v) for v in ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE"))
    candidates = (*named, "/etc/ssl/certs/ca-certificates.crt")
    return tuple(dict.fromkeys(c for c in candidates if c and Path(c).is_file()))


async def _fetch_sdist(root: Path) -> Path:
    """The verified sdist in ``<root>/sdist/`` (downloaded when absent or corrupt)."""
    sdist = root / "sdist" / f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
    if sdist.exists() and sha256_of(sdist) == SDIST_SHA256:
        return sdist
    partial = sdist.with_suffix(".partial")
    actual = await download(SDIST_URL, partial, ca_roots=_ca_roots())
    verify(f"sha256:{SDIST_SHA256}", actual, sdist.name)
    partial.replace(sdist)
    return sdist


def _unpack_source(sdist: Path, src: Path) -> None:
    """Unpack into a sibling directory, then rename: a half-unpacked tree is never used."""
    shutil.rmtree(src, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix="src-", dir=src.parent))
    shutil.rmtree(staging)
    unpack(sdist, staging, name=sdist.name)
    staging.replace(src)


async def _prepare_source(root: Path, work: Path) -> Path:
    """``vendor/llama.cpp`` of the sdist, unpacked once under ``work/src``."""
    src = work / "src"
    vendored = src / f"llama_cpp_python-{SDIST_VERSION}" / "vendor" / "llama.cpp"
    if not (vendored / "CMakeLists.txt").exists():
        await asyncio.to_thread(_unpack_source, await _fetch_sdist(root), src)
    return vendored


async def ensure_llama_server(root: Path | None = None) -> RealLlama:
    """The cached CPU ``llama-server``, built first when absent."""
    root = root or cache_root()
    work = build_dir(root)
    binary = work / "build" / "bin" / "llama-server"
    # Written after a build succeeded: an interrupted build leaves no stamp and runs again
    # (CMake then redoes only what is missing).
    stamp = work / "built"
    version = f"llamacpp-cpu:{SDIST_VERSION}+{SDIST_SHA256[:12]}"
    if binary.exists() and stamp.exists():
        return RealLlama(binary, version, 0.0)
    for tool, package in (("cmake", "cmake"), ("c++", "g++")):
        if shutil.which(tool) is None:
            raise ProvisionError(
                "preflight", f"{tool} is not on PATH; install it (apt install {package})"
            )
    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    source = await _prepare_source(root, work)
    log = work / "build.log"
    target = f"llama.cpp {SDIST_VERSION} (CPU, simulated)"
    build = work / "build"
    await run_step(
        "configure",
        ["cmake", "-S", str(source), "-B", str(build), *CMAKE_FLAGS],
        log_path=log,
        target=target,
    )
    await run_step(
        "build",
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", BUILD_JOBS],
        log_path=log,
        target=target,
    )
    if not binary.exists():
        raise ProvisionError("build", f"the build finished without {binary}; see {log}")
    stamp.write_text(version + "\n", encoding="utf-8")
    return RealLlama(binary, version, time.monotonic() - started)


def main() -> int:
    try:
        built = asyncio.run(ensure_llama_server())
    except ProvisionError as exc:
        print(f"llama.cpp build failed at {exc}", file=sys.stderr)
        return 1
    how = f"built in {built.build_s:.0f} s" if built.build_s else "cached"
    print(f"{built.binary} ({built.version}, CPU build, simulated; {how})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
