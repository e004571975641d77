"""Engine "releases" holding a fake engine (simulated): what a binary-mode download unpacks.

``fake_script("llama-server")`` is a shell script that runs the fake with the real program's
flags under this interpreter; ``engine_archive`` packs it as ``<top>/bin/<program>`` in a tar.gz
or zip, the way llama.cpp publishes its server builds.
"""

from __future__ import annotations

import io
import stat
import sys
import tarfile
import zipfile


def fake_script(program: str) -> str:
    return (
        "#!/bin/sh\n"
        "# simulated engine: the real program's flags, the fake protocol, no inference\n"
        f'exec "{sys.executable}" -m llama_orch.testing.fake_engines.launch {program} "$@"\n'
    )


def engine_archive(program: str, *, fmt: str = "tar.gz", top: str = "engine-b1") -> bytes:
    script = fake_script(program).encode()
    buf = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buf, "w") as zf:
            entry = zipfile.ZipInfo(f"{top}/bin/{program}")
            entry.external_attr = (0o755 | stat.S_IFREG) << 16
            zf.writestr(entry, script)
        return buf.getvalue()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        info = tarfile.TarInfo(f"{top}/bin/{program}")
        info.size = len(script)
        info.mode = 0o755
        tf.addfile(info, io.BytesIO(script))
    return buf.getvalue()
