"""Artifacts over HTTP, and stream transcripts stored as ``trace`` artifacts (SPEC §6.6)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from llama_orch.artifacts import OFF_LOOP_BYTES
from tests.support.narration import NarrationLog
from tests.support.server import config_of, mock_pool, running_server, task_body

PLAN = {"kind": "plan", "tags": ["project:demo"], "content": {"steps": ["a"]}, "metadata": {}}


def artifact_config(tmp_path: Path, **server: Any) -> Any:
    return config_of(mock_pool(), server={"artifacts_dir": str(tmp_path), **server})


class TestArtifactsApi:
    async def test_store_fetch_and_resubmit(self, tmp_path: Path) -> None:
        """201 with a content-addressed id, 200 and the same ref on resubmission, then GET."""
        async with running_server(artifact_config(tmp_path)) as srv:
            created = await srv.client.post("/v1/artifacts", json=PLAN)
            again = await srv.client.post(
                "/v1/artifacts",
                content=json.dumps(PLAN, indent=4),
                headers={"content-type": "application/json"},
            )
            found = await srv.client.get(f"/v1/artifacts/{created.json()['id']}")
        canonical = json.dumps(
            {k: v for k, v in PLAN.items() if v}, sort_keys=True, separators=(",", ":")
        )
        expected = hashlib.sha256(canonical.encode()).hexdigest()
        assert (201, 200) == (created.status_code, again.status_code)
        assert created.json() == again.json()
        assert (expected, f"sha256:{expected}") == (created.json()["id"], created.json()["digest"])
        assert (200, PLAN["content"]) == (found.status_code, found.json()["content"])

    async def test_a_large_artifact_round_trips(self, tmp_path: Path) -> None:
        """An artifact past the size read off the event loop is served whole, and one whose
        file was damaged still answers 404 saying so."""
        big = {**PLAN, "content": {"text": "x" * (2 * OFF_LOOP_BYTES)}}
        other = {**big, "content": {"text": "y" * (2 * OFF_LOOP_BYTES)}}
        async with running_server(artifact_config(tmp_path)) as srv:
            ident = (await srv.client.post("/v1/artifacts", json=big)).json()["id"]
            damaged = (await srv.client.post("/v1/artifacts", json=other)).json()["id"]
            path = tmp_path / damaged[:2] / f"{damaged}.json"
            path.write_bytes(path.read_bytes().replace(b"yyyy", b"zzzz", 1))
            found = await srv.client.get(f"/v1/artifacts/{ident}")
            refused = await srv.client.get(f"/v1/artifacts/{damaged}")
        assert (200, big["content"]) == (found.status_code, found.json()["content"])
        assert (ident, "plan") == (found.json()["id"], found.json()["kind"])
        assert 404 == refused.status_code and "damaged on disk" in refused.json()["message"]

    async def test_size_limit_is_a_clear_413(self, tmp_path: Path) -> None:
        """An artifact over server.artifact_max_bytes gets 413 naming the setting."""
        async with running_server(artifact_config(tmp_path, artifact_max_bytes=1000)) as srv:
            big = {**PLAN, "content": {"text": "x" * 1500}}
            response = await srv.client.post("/v1/artifacts", json=big)
            still = await srv.client.post("/v1/artifacts", json=PLAN)
        assert (413, "INVALID_PARAMS") == (response.status_code, response.json()["code"])
        assert "artifact_max_bytes" in response.json()["message"]
        assert 201 == still.status_code

    async def test_traversal_in_ids_and_tags_is_refused(self, tmp_path: Path) -> None:
        """Ids that are not hashes and tags that could be paths are 400 (or no route: 404);
        nothing is written outside the artifacts directory."""
        async with running_server(artifact_config(tmp_path / "store")) as srv:
            by_id = await srv.client.get("/v1/artifacts/..%5C..%5Cetc%5Cpasswd")
            slashed = await srv.client.get("/v1/artifacts/..%2F..%2Fetc%2Fpasswd")
            tag = await srv.client.post("/v1/artifacts", json={**PLAN, "tags": ["../../x"]})
            listing = await srv.client.get("/v1/artifacts", params={"tag": "../x"})
        assert [400, 400, 400] == [by_id.status_code, tag.status_code, listing.status_code]
        assert 404 == slashed.status_code
        assert [] == [p for p in tmp_path.iterdir() if p.name != "store"]  # noqa: ASYNC240

    async def test_a_trailing_newline_does_not_pass_for_an_id_or_a_tag(
        self, tmp_path: Path
    ) -> None:
        """``$`` in a pattern matches before a final newline: a tag or id ending in one used to
        pass the check (a 200 with nothing listed, a 404 "unknown" cursor) instead of a 400."""
        ident = "a" * 64
        async with running_server(artifact_config(tmp_path)) as srv:
            by_tag = await srv.client.get("/v1/artifacts", params={"tag": "ok\n"})
            by_after = await srv.client.get("/v1/artifacts", params={"after": f"{ident}\n"})
            by_id = await srv.client.get(f"/v1/artifacts/{ident}%0A")
        answers = [(r.status_code, r.json()["code"]) for r in (by_tag, by_after, by_id)]
        assert [(400, "INVALID_PARAMS")] * 3 == answers

    async def test_non_finite_numbers_are_refused(self, tmp_path: Path) -> None:
        """NaN, Infinity and 1e999 have no JSON form: 400, never stored as null."""
        json_type = {"content-type": "application/json"}
        async with running_server(artifact_config(tmp_path)) as srv:
            codes = []
            for value in (b"NaN", b"-Infinity", b"1e999"):
                body = b'{"kind": "plan", "content": {"x": ' + value + b"}}"
                response = await srv.client.post("/v1/artifacts", content=body, headers=json_type)
                codes.append((response.status_code, response.json()["code"]))
            listing = await srv.client.get("/v1/artifacts")
        assert [(400, "INVALID_PARAMS")] * 3 == codes
        assert [] == listing.json()["items"]

    async def test_integers_are_stored_exactly_or_refused(self, tmp_path: Path) -> None:
        """An integer past 64 bits is refused, never stored as a rounded float; the 64-bit
        extremes and a long digit run in a string are stored as sent."""
        json_type = {"content-type": "application/json"}
        kept = [b"18446744073709551615", b"-9223372036854775808", b'"123456789012345678901"']
        async with running_server(artifact_config(tmp_path)) as srv:
            refused = []
            for value in (b"18446744073709551616", b"-9223372036854775809", b"1" * 30):
                body = b'{"kind": "plan", "content": {"x": ' + value + b"}}"
                response = await srv.client.post("/v1/artifacts", content=body, headers=json_type)
                refused.append((response.status_code, response.json()["code"]))
                assert "64 bits" in response.json()["message"]
            stored = []
            for value in kept:
                body = b'{"kind": "plan", "content": {"x": ' + value + b"}}"
                response = await srv.client.post("/v1/artifacts", content=body, headers=json_type)
                assert 201 == response.status_code, response.text
                found = await srv.client.get(f"/v1/artifacts/{response.json()['id']}")
                stored.append(found.json()["content"]["x"])
            listing = await srv.client.get("/v1/artifacts")
        assert [(400, "INVALID_PARAMS")] * 3 == refused
        assert [json.loads(v) for v in kept] == stored
        assert 3 == len(listing.json()["items"])

    async def test_list_by_tag_with_paging(self, tmp_path: Path) -> None:
        """Pages of refs by tag in creation order; `next` is null on the last page."""
        async with running_server(artifact_config(tmp_path)) as srv:
            ids = []
            for n in range(3):
                doc = {**PLAN, "content": {"n": n}}
                ids.append((await srv.client.post("/v1/artifacts", json=doc)).json()["id"])
            first = (await srv.client.get("/v1/artifacts?tag=project:demo&limit=2")).json()
            second = (
                await srv.client.get(
                    f"/v1/artifacts?tag=project:demo&limit=2&after={first['next']}"
                )
            ).json()
            bad_limit = await srv.client.get("/v1/artifacts?limit=0")
        assert ids == [r["id"] for r in first["items"] + second["items"]]
        assert second["next"] is None
        assert 400 == bad_limit.status_code


class TestDamagedStore:
    async def test_damaged_files_cost_only_themselves(self, tmp_path: Path) -> None:
        """Files on disk cut short or overwritten (they used to make GET and every listing a
        bare 500): a damaged document answers 404 saying so and can be posted again; a damaged
        ref file is skipped; every other artifact is listed and served as before."""
        docs = [{**PLAN, "content": {"n": n}} for n in range(4)]
        async with running_server(artifact_config(tmp_path)) as srv:
            ids = [(await srv.client.post("/v1/artifacts", json=d)).json()["id"] for d in docs]
        doc_of = {i: tmp_path / i[:2] / f"{i}.json" for i in ids}
        ref_of = {i: tmp_path / i[:2] / f"{i}.ref" for i in ids}
        doc_of[ids[0]].write_bytes(doc_of[ids[0]].read_bytes()[:40])  # cut short
        flipped = doc_of[ids[1]].read_bytes().replace(b'"n":1', b'"n":7')  # parses, wrong bytes
        doc_of[ids[1]].write_bytes(flipped)
        ref_of[ids[2]].write_bytes(b"[]")
        (tmp_path / "ab").mkdir(exist_ok=True)
        (tmp_path / "ab" / f"ab{'0' * 62}.ref").write_bytes(b'{"id": "ab' + b"0" * 62 + b'"}')
        async with running_server(artifact_config(tmp_path)) as srv:
            listed = await srv.client.get("/v1/artifacts?tag=project:demo")
            cut = await srv.client.get(f"/v1/artifacts/{ids[0]}")
            wrong = await srv.client.get(f"/v1/artifacts/{ids[1]}")
            good = await srv.client.get(f"/v1/artifacts/{ids[3]}")
            again = await srv.client.post("/v1/artifacts", json=docs[0])
            back = await srv.client.get(f"/v1/artifacts/{ids[0]}")
        assert 200 == listed.status_code
        assert [ids[0], ids[1], ids[3]] == [r["id"] for r in listed.json()["items"]]
        for damaged in (cut, wrong):
            assert (404, "NOT_FOUND") == (damaged.status_code, damaged.json()["code"])
            assert "damaged on disk" in damaged.json()["message"]
            assert "POST it again" in damaged.json()["message"]
        assert (200, {"n": 3}) == (good.status_code, good.json()["content"])
        assert (201, ids[0]) == (again.status_code, again.json()["id"])
        assert (200, {"n": 0}) == (back.status_code, back.json()["content"])


class TestStreamTraces:
    async def test_every_finished_stream_is_a_trace(
        self, tmp_path: Path, narration: NarrationLog
    ) -> None:
        """The end frame and the stream-end log line carry the trace id; the trace holds the
        transcript, tagged with the task and session, with engine, pool and replica."""
        async with running_server(artifact_config(tmp_path)) as srv:
            body = task_body(max_tokens=3)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
            trace_id = frames[-1][1]["trace_id"]
            trace = (await srv.client.get(f"/v1/artifacts/{trace_id}")).json()
            by_task = (await srv.client.get(f"/v1/artifacts?tag=task:{body['task_id']}")).json()
        tokens = [data["t"] for event, data in frames if event == "token"]
        assert "trace" == trace["kind"]
        assert {"sse", "stream", f"task:{body['task_id']}", f"session:{body['session_id']}"} == set(
            trace["tags"]
        )
        assert ("mock", "p0", "r0") == (
            trace["metadata"]["engine"],
            trace["metadata"]["pool_id"],
            trace["metadata"]["replica_id"],
        )
        assert trace["metadata"]["engine_version"]
        transcript = trace["content"]["transcript"]
        assert all(json.dumps(t)[1:-1] in transcript for t in tokens)
        assert transcript.endswith("\n\n") and "event: end\n" in transcript
        assert [trace_id] == [r["id"] for r in by_task["items"]]
        assert trace_id == narration.one("stream-end", task_id=body["task_id"])["trace_id"]

    async def test_failed_and_canceled_streams_are_traced_too(self, tmp_path: Path) -> None:
        """An error frame carries its trace id as well."""
        config = config_of(
            mock_pool(mock={"fail_at_token": 1}), server={"artifacts_dir": str(tmp_path)}
        )
        async with running_server(config) as srv:
            body = task_body(max_tokens=4)
            await srv.submit(body)
            frames = await srv.stream(body["task_id"])
        assert ("error", 64) == (frames[-1][0], len(frames[-1][1]["trace_id"]))

    async def test_retention_bounds_the_traces(self, tmp_path: Path) -> None:
        """With trace_retention 2, the third stream's trace pushes out the first."""
        async with running_server(artifact_config(tmp_path, trace_retention=2)) as srv:
            ids = []
            for _ in range(3):
                body = task_body(max_tokens=1)
                await srv.submit(body)
                ids.append((await srv.stream(body["task_id"]))[-1][1]["trace_id"])
            statuses = [(await srv.client.get(f"/v1/artifacts/{i}")).status_code for i in ids]
            listed = (await srv.client.get("/v1/artifacts?tag=sse")).json()["items"]
        assert [404, 200, 200] == statuses
        assert ids[1:] == [r["id"] for r in listed]

    async def test_retention_never_prunes_a_posted_trace(self, tmp_path: Path) -> None:
        """A client may POST a document of kind trace; retention bounds the stream traces the
        server writes, so the posted one stays, whether it was posted before the first stream
        ended or after, and after a restart."""
        config = artifact_config(tmp_path, trace_retention=1)
        posted = {"kind": "trace", "tags": ["mine"], "content": {"transcript": "by hand"}}
        later = {**posted, "content": {"transcript": "later"}}
        async with running_server(config) as srv:
            ids = [(await srv.client.post("/v1/artifacts", json=posted)).json()["id"]]
            for n in range(3):
                body = task_body(max_tokens=1)
                await srv.submit(body)
                await srv.stream(body["task_id"])
                if n == 0:
                    ids.append((await srv.client.post("/v1/artifacts", json=later)).json()["id"])
            running = [(await srv.client.get(f"/v1/artifacts/{i}")).status_code for i in ids]
        async with running_server(config) as srv:
            body = task_body(max_tokens=1)
            await srv.submit(body)
            await srv.stream(body["task_id"])
            restarted = [(await srv.client.get(f"/v1/artifacts/{i}")).status_code for i in ids]
            traces = (await srv.client.get("/v1/artifacts?tag=sse")).json()["items"]
        assert ([200, 200], [200, 200]) == (running, restarted)
        assert 1 == len(traces)

    async def test_paging_goes_on_when_retention_prunes_the_cursor(self, tmp_path: Path) -> None:
        """Paging through traces oldest first while new ones push the oldest out: the page's
        `next` was pruned before the client asked for the following page, which used to be a
        404 that lost the client its place; the following page now starts after it."""
        async with running_server(artifact_config(tmp_path, trace_retention=2)) as srv:

            async def trace() -> str:
                body = task_body(max_tokens=1)
                await srv.submit(body)
                return str((await srv.stream(body["task_id"]))[-1][1]["trace_id"])

            first, second = await trace(), await trace()
            page = (await srv.client.get("/v1/artifacts?tag=sse&limit=1")).json()
            assert ([first], first) == ([r["id"] for r in page["items"]], page["next"])
            third = await trace()  # pushes `first`, the cursor, out
            after = await srv.client.get(f"/v1/artifacts?tag=sse&limit=1&after={first}")
            unknown = await srv.client.get(f"/v1/artifacts?after={'0' * 64}")
        assert 200 == after.status_code, after.text
        assert ([second], second) == (
            [r["id"] for r in after.json()["items"]],
            after.json()["next"],
        )
        assert third != second
        assert (404, "NOT_FOUND") == (unknown.status_code, unknown.json()["code"])


class TestArtifactsCli:
    async def test_ls_and_get_a_trace(self, tmp_path: Path) -> None:
        """`llorch artifacts ls --tag task:<id>` finds the trace; `get --transcript` prints it."""
        from tests.e2e.test_cli import run

        async with running_server(artifact_config(tmp_path)) as srv:
            body = task_body(max_tokens=2)
            await srv.submit(body)
            trace_id = (await srv.stream(body["task_id"]))[-1][1]["trace_id"]
            listed = await run(
                "artifacts", "ls", "--tag", f"task:{body['task_id']}", "--url", srv.url
            )
            shown = await run("artifacts", "get", trace_id, "--transcript", "--url", srv.url)
            as_json = await run("artifacts", "get", trace_id, "--url", srv.url)
            missing = await run("artifacts", "get", "0" * 64, "--url", srv.url)
        assert (0, trace_id) == (listed[0], listed[1].split()[0])
        assert "trace" == listed[1].split()[1]
        assert 0 == shown[0] and shown[1].startswith("event: ") and "event: end\n" in shown[1]
        assert trace_id == json.loads(as_json[1])["id"]
        assert 1 == missing[0] and "NOT_FOUND" in missing[2]
