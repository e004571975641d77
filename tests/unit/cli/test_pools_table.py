from __future__ import annotations

from llama_orch.cli.pools import render, row


class TestGpuColumn:
    def test_a_cluster_pool_shows_its_host_before_the_mask(self) -> None:
        pool = {
            "pool_id": "big",
            "engine": "llamacpp",
            "device_mask": [0, 1],
            "replicas": [{"replica_id": "r0", "host": "ws2"}],
        }
        assert "ws2:0,1" == row(pool, {})[5]

    def test_a_pool_spread_over_hosts_names_each(self) -> None:
        pool = {
            "pool_id": "wide",
            "engine": "llamacpp",
            "device_mask": [1],
            "replicas": [
                {"replica_id": "r0", "host": "ws3"},
                {"replica_id": "r1", "host": "ws2"},
                {"replica_id": "r2", "host": "ws3"},
            ],
        }
        assert "ws2+ws3:1" == row(pool, {})[5]

    def test_a_local_pool_shows_the_mask_alone(self) -> None:
        pool = {"pool_id": "p0", "engine": "mock", "device_mask": [1], "replicas": [{}]}
        assert "1" == row(pool, {})[5]


class TestCells:
    def test_an_enormous_pool_id_or_model_is_cut(self) -> None:
        """A pool id and model of ten thousand characters are cut, saying how much was left
        out, so the table's rows stay readable."""
        pool = {"pool_id": "p" * 10_000, "engine": "mock", "model_id": "m" * 10_000}
        lines = render([row(pool, {})]).split("\n")
        assert all(len(line) < 1000 for line in lines)
        assert "p… (9880 more characters)" in lines[1]
        assert "m… (9880 more characters)" in lines[1]
