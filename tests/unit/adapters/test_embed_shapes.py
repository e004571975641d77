"""Engines' embedding and rerank answers read into the common result: by index, complete, and
refused when an answer would misalign vectors with their inputs."""

from __future__ import annotations

from typing import Any

import pytest

from llama_orch.adapters._embed import openai_embeddings, rerank_results, tei_embed, tei_rerank
from llama_orch.contracts.engine import EmbedRequest
from llama_orch.vocab import Workload

REQUEST = EmbedRequest(task_id="t", model="m", workload=Workload.EMBEDDING, texts=("a", "b"))
RERANK = EmbedRequest(
    task_id="t", model="m", workload=Workload.RERANK, texts=("a", "b", "c"), query="q"
)


def test_openai_list_is_put_in_index_order_with_usage() -> None:
    answer = {
        "data": [{"index": 1, "embedding": [0.5, 0.5]}, {"index": 0, "embedding": [1.0, 0.0]}],
        "usage": {"prompt_tokens": 7, "total_tokens": 7},
    }
    result = openai_embeddings(REQUEST, answer)
    assert [[1.0, 0.0], [0.5, 0.5]] == [list(v) for v in result.vectors]
    assert 7 == result.tokens_in


@pytest.mark.parametrize(
    "data",
    [
        [{"index": 0, "embedding": [1.0]}],
        [{"index": 0, "embedding": [1.0]}, {"index": 0, "embedding": [2.0]}],
        [{"index": 0, "embedding": [1.0]}, {"index": 2, "embedding": [2.0]}],
        [{"index": 0, "embedding": "AAAA"}, {"index": 1, "embedding": [2.0]}],
        [{"index": 0, "embedding": [1.0, "2"]}, {"index": 1, "embedding": [2.0, 1.0]}],
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [2.0, None]}],
        [{"index": 0, "embedding": [1.0, 2.0]}, {"index": 1, "embedding": [2.0]}],
        [{"index": 0, "embedding": []}, {"index": 1, "embedding": []}],
        [{"index": 0, "embedding": [1.0, -1e39]}, {"index": 1, "embedding": [2.0, 1.0]}],
    ],
)
def test_a_misaligned_answer_is_refused(data: list[dict[str, Any]]) -> None:
    with pytest.raises((ValueError, TypeError)):
        openai_embeddings(REQUEST, {"data": data})


def test_rerank_scores_go_back_to_their_documents() -> None:
    answer = {
        "results": [
            {"index": 2, "relevance_score": 0.9},
            {"index": 0, "relevance_score": 0.5},
            {"index": 1, "relevance_score": 0.1},
        ]
    }
    assert [0.5, 0.1, 0.9] == list(rerank_results(RERANK, answer).scores)
    tei = [{"index": 1, "score": 0.3}, {"index": 2, "score": 0.2}, {"index": 0, "score": 0.1}]
    assert [0.1, 0.3, 0.2] == list(tei_rerank(RERANK, tei).scores)


def test_tei_embed_is_a_bare_list() -> None:
    assert 2 == len(tei_embed(REQUEST, [[1.0], [2.0]]).vectors)
    with pytest.raises(TypeError):
        tei_embed(REQUEST, {"error": "x"})


@pytest.mark.parametrize("score", ["NaN", "inf", "0.5", None, True, [0.5]])
def test_a_rerank_score_that_is_no_json_number_is_refused(score: Any) -> None:
    """A string such as ``"NaN"`` would become a float the answer cannot carry (it went out as
    null and sorted anywhere); only JSON numbers are scores."""
    results = [{"index": i, "relevance_score": 0.5} for i in range(3)]
    results[1]["relevance_score"] = score
    with pytest.raises((ValueError, TypeError)):
        rerank_results(RERANK, {"results": results})
    tei = [{"index": i, "score": 0.5 if i != 1 else score} for i in range(3)]
    with pytest.raises((ValueError, TypeError)):
        tei_rerank(RERANK, tei)
