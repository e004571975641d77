"""The metrics lint itself, on hand-written scrapes: it must flag what the contract forbids."""

from __future__ import annotations

from tests.support.metrics_lint import lint as lint_scrape


class TestLintFlagsProblems:
    """The lint itself catches what it must (ORCH-3282), on hand-written scrapes."""

    def test_unexpected_label_and_budget(self) -> None:
        """An extra label, a value over budget and an unknown family are all reported."""
        contract = {
            "label_budgets": {"pool_id": 2},
            "metrics": [
                {"name": "pool_ready", "type": "gauge", "labels": ["pool_id"], "max_series": 2}
            ],
        }
        text = (
            "# TYPE pool_ready gauge\n"
            'pool_ready{pool_id="a"} 1\npool_ready{pool_id="b"} 1\n'
            'pool_ready{pool_id="c",user="bob"} 1\n'
            "# TYPE stray gauge\nstray 1\n"
        )
        assert [
            "stray: exposed but not in the lint file",
            "pool_ready: labels ['pool_id', 'user'] (unexpected ['user'], missing [])",
            "pool_ready: 3 values of pool_id exceed its budget of 2",
            "pool_ready: 3 series exceed max_series 2",
        ] == lint_scrape(contract, text)

    def test_missing_metric_wrong_type_and_value(self) -> None:
        """A missing family, a wrong type and a value outside the enum are reported."""
        contract = {
            "label_budgets": {},
            "metrics": [
                {"name": "a_total", "type": "counter", "labels": [], "max_series": 1},
                {
                    "name": "b",
                    "type": "counter",
                    "labels": ["policy"],
                    "max_series": 4,
                    "allowed_values": {"policy": ["reject"]},
                },
            ],
        }
        text = '# TYPE b gauge\nb{policy="yolo"} 1\n'
        assert [
            "a_total: missing from the scrape",
            "b: type gauge, contract says counter",
            "b: policy values ['yolo'] not allowed",
        ] == lint_scrape(contract, text)
