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


def escaping_script(program: str, marker: str, *, scrub_env: bool = False) -> str:
    """``fake_script`` behind a launcher wrapper that leaves helpers outside the engine's
    process group, as a careless engine wrapper or a daemonizing helper does: one in a session
    of its own (``setsid``), one double-forked into its own session (its parent exits at once,
    so it is re-parented away from the engine); with ``scrub_env`` two more with an empty
    environment, one of them double-forked. Each helper sleeps with ``marker`` on its command
    line."""
    sleeper = f'"{sys.executable}" -c "import time; time.sleep(600)" {marker}'
    scrubbed = f"env -i setsid {sleeper} &\n(env -i setsid {sleeper} &)\n" if scrub_env else ""
    return (
        "#!/bin/sh\n"
        "# simulated engine behind a wrapper whose helpers leave its process group\n"
        f"setsid {sleeper} &\n"
        f"(setsid {sleeper} &)\n"
        f"{scrubbed}"
        f'exec "{sys.executable}" -m llama_orch.testing.fake_engines.launch {program} "$@"\n'
    )


def engine_archive(
    program: str, *, fmt: str = "tar.gz", top: str = "engine-b1", script_text: str | None = None
) -> bytes:
    """``script_text`` in place of ``fake_script(program)`` (e.g. an ``escaping_script``)."""
    script = (script_text or fake_script(program)).encode()
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
