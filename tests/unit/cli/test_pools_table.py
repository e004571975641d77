from __future__ import annotations

from llama_orch.cli.pools import row


class TestGpuColumn:
    def test_a_cluster_pool_shows_its_host_before_the_mask(self) -> None:
        pool = {
            "pool_id": "big",
            "engine": "llamacpp",
            "device_mask": [0, 1],
            "replicas": [{"replica_id": "r0", "host": "ws2"}],
        }
        assert "ws2:0,1" == row(pool, {})[5]

    def test_a_local_pool_shows_the_mask_alone(self) -> None:
        pool = {"pool_id": "p0", "engine": "mock", "device_mask": [1], "replicas": [{}]}
        assert "1" == row(pool, {})[5]
