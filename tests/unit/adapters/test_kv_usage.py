"""KV cache use read from engine scrapes during probes (kv_cache_usage_ratio, SPEC §16)."""

from __future__ import annotations

import httpx

from llama_orch.adapters._prom import gauge_value
from llama_orch.adapters.mock import MockEngine
from llama_orch.config import MockEngineConfig
from tests.unit.adapters.engine_support import adapter_for

LLAMACPP_PROPS = {
    "total_slots": 2,
    "build_info": "b1-abc",
    "endpoint_metrics": True,
    "default_generation_settings": {"n_ctx": 4096},
}
VLLM_MODELS = {"data": [{"id": "m", "max_model_len": 8192}]}


def engine(routes: dict[str, httpx.Response]) -> httpx.MockTransport:
    """A fake engine answering each path from ``routes``, and 404 elsewhere."""

    def handle(request: httpx.Request) -> httpx.Response:
        return routes.get(request.url.path, httpx.Response(404, json={"error": "no route"}))

    return httpx.MockTransport(handle)


class TestGaugeValue:
    def test_reads_an_unlabelled_gauge(self) -> None:
        """A bare ``name value`` line is read; HELP and TYPE comments are skipped."""
        text = "# HELP llamacpp:kv_cache_usage_ratio x\nllamacpp:kv_cache_usage_ratio 0.25\n"
        assert 0.25 == gauge_value(text, "llamacpp:kv_cache_usage_ratio")

    def test_labelled_samples_are_averaged(self) -> None:
        """Several labelled samples (vLLM data parallel) give their mean."""
        text = 'g{engine="0"} 0.2\ng{engine="1"} 0.4\n'
        assert 0.3 == round(gauge_value(text, "g") or 0.0, 6)

    def test_falls_back_to_the_next_name(self) -> None:
        """The first name present wins, so an older engine's name still works."""
        assert 0.5 == gauge_value("old_name 0.5\n", "new_name", "old_name")

    def test_longer_names_and_absent_metrics_are_not_matched(self) -> None:
        """A name that only shares the prefix is not the gauge; absence reads as None."""
        assert None is gauge_value("g_total 3\nother 1\n", "g")


class TestAdapters:
    async def test_llamacpp_reports_the_metrics_gauge(self) -> None:
        """llama.cpp with --metrics: props carry ``llamacpp:kv_cache_usage_ratio``."""
        transport = engine(
            {
                "/props": httpx.Response(200, json=LLAMACPP_PROPS),
                "/slots": httpx.Response(200, json=[]),
                "/metrics": httpx.Response(200, text="llamacpp:kv_cache_usage_ratio 0.75\n"),
            }
        )
        adapter = adapter_for("llamacpp", "http://engine", "m", transport=transport)
        assert 0.75 == (await adapter.props()).kv_cache_usage_ratio

    async def test_llamacpp_builds_without_the_gauge_stay_unset(self) -> None:
        """A llama.cpp build whose scrape lacks the gauge, or has metrics off, reports None."""
        without = engine(
            {
                "/props": httpx.Response(200, json=LLAMACPP_PROPS),
                "/metrics": httpx.Response(200, text="llamacpp:requests_processing 1\n"),
            }
        )
        metrics_off = engine(
            {"/props": httpx.Response(200, json={**LLAMACPP_PROPS, "endpoint_metrics": False})}
        )
        ratios = [
            (
                await adapter_for("llamacpp", "http://e", "m", transport=t).props()
            ).kv_cache_usage_ratio
            for t in (without, metrics_off)
        ]
        assert [None, None] == ratios

    async def test_vllm_reads_either_name(self) -> None:
        """vLLM's current and older KV gauge names are both read as a 0..1 fraction."""
        ratios = []
        for name in ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc"):
            transport = engine(
                {
                    "/v1/models": httpx.Response(200, json=VLLM_MODELS),
                    "/metrics": httpx.Response(200, text=f'{name}{{engine="0"}} 0.4\n'),
                }
            )
            adapter = adapter_for("vllm", "http://engine", "m", transport=transport)
            ratios.append((await adapter.props()).kv_cache_usage_ratio)
        assert [0.4, 0.4] == ratios

    async def test_vllm_unreachable_metrics_are_not_fatal(self) -> None:
        """A failing ``/metrics`` leaves the ratio unset and the props intact."""
        transport = engine({"/v1/models": httpx.Response(200, json=VLLM_MODELS)})
        props = await adapter_for("vllm", "http://engine", "m", transport=transport).props()
        assert (8192, None) == (props.ctx_max, props.kv_cache_usage_ratio)

    async def test_mock_simulates_it_from_busy_slots(self) -> None:
        """The mock's simulated ratio is the share of its slots in use; idle is 0."""
        mock = MockEngine(MockEngineConfig(), slots=4, model="m")
        assert 0.0 == (await mock.props()).kv_cache_usage_ratio
