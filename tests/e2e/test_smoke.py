from __future__ import annotations

from tests.support.server import config_of, mock_pool, running_server, task_body


class TestAdmissionToStream:
    async def test_stream_order(self) -> None:
        """A submitted task streams started, tokens with rising indices, then end."""
        async with running_server(config_of()) as srv:
            body = task_body(max_tokens=5)
            response = await srv.submit(body)
            assert response.status_code == 202
            frames = await srv.stream(body["task_id"])
        events = [e for e, _ in frames]
        assert events[0] == "started"
        assert events[-1] == "end"
        tokens = [d for e, d in frames if e == "token"]
        assert list(range(5)) == [t["i"] for t in tokens]
        assert frames[-1][1]["tokens_out"] == 5


class TestBackgroundWork:
    async def test_every_loop_is_supervised_and_stops(self) -> None:
        """While serving, the dispatch, probe and GPU sampler loops all run under the one
        supervisor; after shutdown none is left."""
        async with running_server(config_of(mock_pool(replicas=2))) as srv:
            supervisor = srv.deps.supervisor
            running = supervisor.loops
        assert ["dispatch-p0", "gpu-sampler", "probe-p0-r0", "probe-p0-r1"] == running
        assert [] == supervisor.loops
