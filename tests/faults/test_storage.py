"""A disk that refuses writes under a running server: the catalog root and the artifacts
directory on a small tmpfs, remounted read-only or filled while the server runs."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.disks import filled, remount, small_tmpfs
from tests.support.gguf_files import tiny_llama_gguf
from tests.support.serve_process import serve_process
from tests.support.server import mock_pool


def refusal(response: httpx.Response) -> tuple[int, str, str]:
    body = response.json()
    return response.status_code, body["code"], body["message"]


class TestDiskRefusesWrites:
    def test_read_only_and_full_disks_are_typed_errors_and_nothing_is_lost(
        self, tmp_path: Path
    ) -> None:
        """Writes refused by the disk used to be bare 500s with tracebacks; each is now a
        typed error naming the directory and the disk's reason, and once the disk takes
        writes again the same requests succeed with the earlier entries intact."""
        first, second = tiny_llama_gguf(tmp_path / "a.gguf"), tiny_llama_gguf(tmp_path / "b.gguf")
        with small_tmpfs(tmp_path / "disk") as disk:
            config = {
                "catalog": {"root": str(disk / "catalog")},
                "pools": [mock_pool()],
                "server": {"artifacts_dir": str(disk / "artifacts")},
            }
            plan = {"kind": "plan", "content": {"steps": ["a"]}}
            with (
                serve_process(config, tmp_path) as served,
                httpx.Client(base_url=served.url, timeout=30) as client,
            ):
                ref = {"ref": f"file:{first}"}
                assert 201 == client.post("/v1/catalog/models", json=ref).status_code
                remount(disk, "ro")
                catalog = f"cannot write the model catalog under {disk / 'catalog'}"
                answers = [
                    client.post("/v1/catalog/models", json={"ref": f"file:{second}"}),
                    client.post(
                        f"/v1/catalog/models/file:{first}/state", json={"state": "Retired"}
                    ),
                    client.delete(f"/v1/catalog/models/file:{first}"),
                ]
                for answer in answers:
                    status, code, message = refusal(answer)
                    assert (500, "INTERNAL") == (status, code)
                    assert f"{catalog}: Read-only file system" in message
                stored = refusal(client.post("/v1/artifacts", json=plan))
                expected = f"cannot store the artifact under {disk / 'artifacts'}: Read-only"
                assert (500, "INTERNAL") == stored[:2] and expected in stored[2]
                remount(disk, "rw")
                with filled(disk):
                    full = refusal(client.post("/v1/artifacts", json=plan))
                assert "No space left on device" in full[2]
                assert 201 == client.post("/v1/artifacts", json=plan).status_code
                again = client.post("/v1/catalog/models", json={"ref": f"file:{second}"})
                assert 201 == again.status_code
                listed = client.get("/v1/catalog/models").json()["models"]
                assert {f"file:{first}", f"file:{second}"} == {m["id"] for m in listed}
                log = served.log_path.read_text()
        assert "Traceback" not in log
