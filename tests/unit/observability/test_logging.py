"""Log output: JSON Lines by default, pretty on request, narration in both, redaction at sink."""

from __future__ import annotations

import io
import logging
import re

import orjson
import structlog

from llama_orch.observability.logging import HUMAN_MAX, choose_log_format, configure_logging
from llama_orch.observability.narration import narrate
from llama_orch.observability.redaction import Redactor


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


class TestJsonLines:
    def test_narration_is_one_json_object_per_line(self) -> None:
        """A narrated event is one JSON line with the taxonomy fields and the request context."""
        out = io.StringIO()
        configure_logging("json", stream=out)
        structlog.contextvars.bind_contextvars(correlation_id="cid-7")
        narrate("admission", "admit", "p0", "Admits task abcd1234 to p0.", pool_id="p0", x=None)
        (line,) = lines_of(out)
        event = orjson.loads(line)
        assert {
            "actor": "admission",
            "action": "admit",
            "target": "p0",
            "human": "Admits task abcd1234 to p0.",
            "pool_id": "p0",
            "correlation_id": "cid-7",
            "level": "info",
        } == {
            k: event[k]
            for k in ("actor", "action", "target", "human", "pool_id", "correlation_id", "level")
        }
        assert "x" not in event and "timestamp" in event

    def test_a_long_sentence_is_redacted_before_it_is_cut(self) -> None:
        """Wherever the bound falls inside a configured secret, none of it is written."""
        secret = "Xq7vK2mPzR9tLw4sNb6yHc1dJf8gUe3a"
        out = io.StringIO()
        configure_logging("json", stream=out, redactor=Redactor((secret,)))
        for pad in range(HUMAN_MAX - len(secret), HUMAN_MAX + 1):
            narrate("a", "b", "c", "x" * pad + secret)
        humans = [orjson.loads(line)["human"] for line in lines_of(out)]
        assert len(humans) == len(secret) + 1
        assert all(len(h) <= HUMAN_MAX and secret[:4] not in h for h in humans)

    def test_levels_below_the_threshold_are_dropped(self) -> None:
        """At level warning, info narration is not written."""
        out = io.StringIO()
        configure_logging("json", "warning", stream=out)
        narrate("a", "b", "c", "Quiet.")
        narrate("a", "b", "c", "Loud.", level="warning")
        assert ["Loud."] == [orjson.loads(line)["human"] for line in lines_of(out)]


class TestPretty:
    def test_human_sentence_leads(self) -> None:
        """Pretty mode starts each line with the narration; structured fields follow."""
        out = io.StringIO()
        configure_logging("pretty", stream=out)
        narrate("dispatcher", "place", "p0", "Places task 1234 on p0/r0.", pool_id="p0")
        (line,) = lines_of(out)
        assert "Places task 1234 on p0/r0." in line
        assert line.index("Places task") < line.index("[dispatcher]")
        assert "pool_id=p0" in line and "human=" not in line

    def test_line_reads_time_level_sentence_actor_fields(self) -> None:
        """A pretty line is the time of day, the level, the sentence, the actor, the fields;
        the action and target the sentence already says are left out."""
        out = io.StringIO()
        configure_logging("pretty", stream=out)
        narrate("pool-manager", "readiness", "p0", "Replica p0/r0 turns ready.", pool_id="p0")
        (line,) = lines_of(out)
        assert re.fullmatch(
            r"\d\d:\d\d:\d\d \[info\s*\] Replica p0/r0 turns ready\.\s+\[pool-manager\] pool_id=p0",
            line,
        ), line

    def test_colours_only_on_request_or_a_terminal(self) -> None:
        """A StringIO is no terminal: no escape codes unless colours are asked for."""
        plain, coloured = io.StringIO(), io.StringIO()
        configure_logging("pretty", stream=plain)
        narrate("a", "b", "c", "Plain.")
        configure_logging("pretty", stream=coloured, colors=True)
        narrate("a", "b", "c", "Coloured.")
        assert "\x1b[" not in plain.getvalue() and "\x1b[" in coloured.getvalue()


class TestChooseLogFormat:
    def test_terminal_gets_pretty_unless_told(self) -> None:
        """Pretty at a terminal, JSON elsewhere; an explicit choice beats both."""
        assert "pretty" == choose_log_format("json", explicit=False, tty=True)
        assert "json" == choose_log_format("json", explicit=False, tty=False)
        assert "json" == choose_log_format("json", explicit=True, tty=True)
        assert "pretty" == choose_log_format("pretty", explicit=True, tty=False)


class TestSink:
    def test_secrets_in_fields_are_redacted(self) -> None:
        """Configured secrets and secret shapes never reach the rendered line."""
        out = io.StringIO()
        configure_logging("json", redactor=Redactor(("s3cr3t-value",)), stream=out)
        narrate(
            "adapter-host",
            "error",
            "p0",
            "Fails with s3cr3t-value.",
            detail="GET https://u:pw123@engine/v1?api_key=abcdef Authorization: Bearer abcdefgh12",
            authorization="Bearer abc",
        )
        text = out.getvalue()
        for secret in ("s3cr3t-value", "pw123", "api_key=abcdef", "abcdefgh12", "Bearer abc"):
            assert secret not in text
        assert 1 == len(lines_of(out))

    def test_secrets_among_many_plain_fields_are_redacted(self) -> None:
        """Plain fields are screened together; one secret anywhere among them (a field, a list
        item, a secret-named field) still redacts exactly what it must, and the rest is
        left as it was."""
        out = io.StringIO()
        configure_logging("json", redactor=Redactor(("s3cr3t-value",)), stream=out)
        plain = {f"field_{i}": f"value {i}" for i in range(12)}
        narrate(
            "admission",
            "admit",
            "p0",
            "Admits a task.",
            filters_applied=["engine 6/6", "compute_capability 1/1", "key s3cr3t-value"],
            reasons=("GET /v1/models?token=abcdefgh123", "plain"),
            token="short",
            **plain,
        )
        (line,) = lines_of(out)
        event = orjson.loads(line)
        assert "s3cr3t-value" not in line and "abcdefgh123" not in line
        assert ["engine 6/6", "compute_capability 1/1", "key [REDACTED]"] == event[
            "filters_applied"
        ]
        assert "[REDACTED]" == event["token"]
        assert plain == {k: event[k] for k in plain}

    def test_stdlib_records_share_the_sink(self) -> None:
        """Server records from the standard library become redacted JSON lines too."""
        out = io.StringIO()
        configure_logging("json", redactor=Redactor(("tok-abcdef",)), stream=out)
        logging.getLogger("uvicorn.error").warning("client sent tok-abcdef")
        (line,) = lines_of(out)
        event = orjson.loads(line)
        assert ("client sent [REDACTED]", "warning", "uvicorn.error") == (
            event["event"],
            event["level"],
            event["logger"],
        )

    def test_http_client_chatter_is_quiet(self) -> None:
        """httpx's per-request INFO lines (engine probes, streams) are not logged."""
        out = io.StringIO()
        configure_logging("json", stream=out)
        logging.getLogger("httpx").info("HTTP Request: GET http://engine/health")
        logging.getLogger("httpx").warning("connection pool is full")
        assert ["connection pool is full"] == [orjson.loads(x)["event"] for x in lines_of(out)]
