from __future__ import annotations

import pytest

from llama_orch.config import Config
from llama_orch.server.listener import (
    AddressInUse,
    CannotBind,
    bind_listener,
    connection_cap,
    engine_fds,
)
from tests.support.server import SIMULATED_GPUS, mock_pool


class TestConnectionCap:
    def test_the_cap_leaves_room_for_engine_connections_and_own_files(self) -> None:
        engine = {
            **mock_pool("e"),
            "engine": "llamacpp",
            "endpoint": "http://127.0.0.1:9",
            "provisioning": {"mode": "external"},
            "slots": 4,
            "replicas": 2,
        }
        engine.pop("mock")
        config = Config.model_validate({"gpus": SIMULATED_GPUS, "pools": [mock_pool(), engine]})
        # Two replicas of (4 slots + 8 headroom + 4 probes); the mock engine holds none.
        assert 32 == engine_fds(config.pools)
        assert 1024 - 64 - 32 == connection_cap(8192, 1024, 32)
        assert 500 == connection_cap(500, 1_048_576, 32)
        assert 1 == connection_cap(8192, 64, 32)


class TestBindListener:
    def test_a_taken_port_is_refused_unless_both_share_it(self) -> None:
        first = bind_listener("127.0.0.1", 0, 16, reuse_port=False)
        port = first.getsockname()[1]
        with first, pytest.raises(AddressInUse, match="address already in use"):
            bind_listener("127.0.0.1", port, 16, reuse_port=True)
        shared = bind_listener("127.0.0.1", 0, 16, reuse_port=True)
        with shared, bind_listener("127.0.0.1", shared.getsockname()[1], 16, reuse_port=True):
            pass

    def test_an_address_not_on_this_machine_is_a_clear_refusal(self) -> None:
        """An address no interface here has (TEST-NET-1) is refused naming it and the fix,
        not a bare socket error."""
        with pytest.raises(CannotBind, match=r"cannot listen on 192\.0\.2\.1:8080: .*--bind"):
            bind_listener("192.0.2.1", 8080, 16, reuse_port=False)
