"""The CLI's HTTP client: submit, stream, cancel (through httpx and httpx-sse)."""

from __future__ import annotations

import contextlib
import json
import math
import sys
import uuid
from collections.abc import Iterator
from types import TracebackType
from typing import Any
from urllib.parse import quote

import click
import httpx
from httpx_sse import connect_sse

from llama_orch.config import check_http_url
from llama_orch.observability.logging import printable
from llama_orch.observability.redaction import Redactor

EXIT_OK = 0
EXIT_ERROR = 1
#: A usage or config mistake: what was typed, or the file named, is wrong.
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130


class Utf8Text(click.ParamType[str]):
    """Text that is UTF-8. Bytes that are not (a Latin-1 file passed as "$(cat f)") reach
    Python as lone surrogates, which no JSON body or URL can carry: refused here, by name."""

    name = "text"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = str(value)
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as exc:
            byte = (
                ord(text[exc.start]) - 0xDC00 if 0xDC80 <= ord(text[exc.start]) <= 0xDCFF else None
            )
            which = f"byte 0x{byte:02x}" if byte is not None else "a lone surrogate"
            self.fail(
                f"not UTF-8 text ({which} at character {exc.start}); convert it to UTF-8 "
                "(e.g. with iconv)",
                param,
                ctx,
            )
        return text


TEXT = Utf8Text()


class IdText(Utf8Text):
    """An id (of a task, pool, model, artifact): UTF-8 text with something in it. An empty one
    (an unset shell variable) would be sent as a path naming the collection, not an id."""

    name = "id"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        text = super().convert(value, param, ctx)
        if not text.strip():
            self.fail(f"empty ({text!r}); give the id to act on", param, ctx)
        return text


ID = IdText()


class Seconds(click.FloatRange):
    """A finite number of seconds: ``nan`` and ``inf`` parse as floats and pass a lower bound
    (NaN compares false), then make ``time.sleep`` raise."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        seconds = super().convert(value, param, ctx)
        if not math.isfinite(seconds):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        return seconds


def segment(value: str) -> str:
    """``value`` (an id typed by the operator) as one URL path segment: ``/``, ``?``, ``#``
    and ``%`` escaped, so `../status` or `x?y` names that id and not another endpoint."""
    if value in (".", ".."):
        raise click.UsageError(f"{value!r} is not an id")
    return quote(value, safe="")


def shown_url(url: str | httpx.URL) -> str:
    """``url`` as a message may show it: a user and password in it (a proxy's basic auth)
    or a key in its query are redacted."""
    return str(Redactor().text(str(url)))


def server_url(url: str, given_as: str) -> str:
    """``url`` when it names a server (http or https, a host, a valid port); else a usage error
    naming where it came from, rather than a request that fails as if the server were down."""
    try:
        return check_http_url(url)
    except ValueError as exc:
        raise click.UsageError(f"{given_as}: {exc}; e.g. http://127.0.0.1:8080") from exc


class NotOrchAnswer(Exception):
    """An answer without the X-Correlation-Id llama-orch puts on every answer with a body:
    the URL reaches another server (an engine's port, a web server, a proxy whose upstream is
    down)."""


def _llama_orch_only(response: httpx.Response) -> None:
    # A 204 carries nothing to parse (and llama-orch sends it without the header).
    if response.status_code != 204 and "x-correlation-id" not in response.headers:
        kind = response.headers.get("content-type", "no content type").split(";")[0]
        raise NotOrchAnswer(
            f"{shown_url(response.request.url.copy_with(query=None))} answered HTTP "
            f"{response.status_code} ({kind}), which is not an answer from llama-orch; is "
            "--url (or LLORCH_URL) the server's address and port, and is the server up behind "
            "any proxy?"
        )


class UnreadableAnswer(Exception):
    """An answer from llama-orch that this client cannot read: not JSON, not an object, a
    field missing or of another type (a server of another version, a proxy rewriting bodies)."""


#: What reading an answer of another shape raises: JSON that does not parse (ValueError), a
#: field missing (KeyError), a list where an object was expected (AttributeError, TypeError).
_UNREADABLE = (ValueError, LookupError, TypeError, AttributeError)


@contextlib.contextmanager
def reading(response: httpx.Response) -> Iterator[None]:
    """Wraps the code that reads ``response``'s body: an answer of another shape ends the
    command with one line naming the request (``UnreadableAnswer``), not a traceback."""
    try:
        yield
    except _UNREADABLE as exc:
        request = response.request
        raise UnreadableAnswer(
            f"{request.method} {shown_url(request.url.copy_with(query=None))} answered HTTP "
            f"{response.status_code} with a body this client cannot read "
            f"({type(exc).__name__}: {printable(str(exc))[:120]}); do llorch and the server "
            "run the same version of llama-orch?"
        ) from None


def next_page(cursor: Any, seen: set[str]) -> str | None:
    """The next page's cursor, or None at the end; a cursor the server gave before would
    have the listing page forever, so it ends the command as an unreadable answer."""
    if cursor is None or cursor == "":
        return None
    if not isinstance(cursor, str):
        raise TypeError(f"the page cursor {cursor!r} is not text")
    if cursor in seen:
        raise ValueError(f"the page cursor {printable(cursor)[:40]!r} came back again")
    seen.add(cursor)
    return cursor


#: The most of a server's message an error line quotes: a longer one (a whole engine log,
#: say) is cut there, saying how much was left out.
QUOTE_MAX = 500


#: The most characters of server text a table cell shows (a model ref, an engine's error):
#: room for a long Hub ref or path whole, not for text that would push every row off screen.
CELL_MAX = 120


def quoted(text: str, limit: int = QUOTE_MAX) -> str:
    """``text`` from the server fit for one error line or table cell: cut at ``limit``
    characters, its control characters escaped (after the cut, so no escape is split)."""
    if len(text) <= limit:
        return printable(text)
    return f"{printable(text[:limit])}… ({len(text) - limit} more characters)"


def json_text(value: Any) -> str:
    """``value`` as indented JSON for a person: non-ASCII letters as they are, but every
    character that is not printable (C1 controls, bidirectional overrides, which JSON leaves
    raw) as its ``\\uXXXX`` escape, so the text is still JSON and cannot drive the terminal."""
    text = json.dumps(value, indent=2, ensure_ascii=False)
    if text.replace("\n", "").isprintable():
        return text
    return "".join(c if c == "\n" or c.isprintable() else json.dumps(c)[1:-1] for c in text)


def http_client(url: str, token: str | None, timeout: httpx.Timeout | float) -> httpx.Client:
    """The HTTP client of every command that talks to the server: the bearer token, and
    answers from anything but llama-orch refused (NotOrchAnswer) before they are parsed."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(
        base_url=url.rstrip("/"),
        headers=headers,
        timeout=timeout,
        event_hooks={"response": [_llama_orch_only]},
    )


#: How long an answer may keep the client waiting for its next bytes: a server that takes the
#: connection and never answers (a wedged process, a proxy holding the request) is given up on.
ANSWER_TIMEOUT_S = 10.0
#: A task's stream waits as long as the task does: queued, a token may be minutes away.
STREAM_TIMEOUT = httpx.Timeout(ANSWER_TIMEOUT_S, read=None)


def cannot_reach(client: OrchClient, exc: httpx.TransportError, hint: str = "") -> int:
    """Says the server could not be reached, and why (a timeout's own text is only "timed
    out"); the exit status for it."""
    why = (
        f"no answer within {ANSWER_TIMEOUT_S:g} s"
        if isinstance(exc, httpx.TimeoutException)
        else str(exc)
    )
    click.echo(f"llorch: cannot reach {client.url}: {why}{hint}", err=True)
    return EXIT_UNREACHABLE


class OrchClient:
    def __init__(self, url: str, token: str | None) -> None:
        #: The server's URL as messages show it.
        self.url = shown_url(url.rstrip("/"))
        self.http = http_client(url, token, ANSWER_TIMEOUT_S)

    def __enter__(self) -> OrchClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.http.close()
        if isinstance(exc, NotOrchAnswer):
            click.echo(f"llorch: {exc}", err=True)
            raise SystemExit(EXIT_UNREACHABLE) from None
        if isinstance(exc, UnreadableAnswer):
            click.echo(f"llorch: {exc}", err=True)
            raise SystemExit(EXIT_ERROR) from None


def fail(response: httpx.Response) -> int:
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        message = f"{body.get('code')}: {body.get('message')}"
        if body.get("hint"):
            message += f" (hint: {body['hint']})"
        if body.get("retry_after_ms") is not None:
            message += f" (retry in {body['retry_after_ms']} ms)"
    else:
        message = response.text[:200]
    # A message may quote an engine's or another client's text: escaped, it cannot drive
    # the terminal.
    click.echo(f"llorch: HTTP {response.status_code} {quoted(message)}", err=True)
    return EXIT_ERROR


def _pick_pool(client: OrchClient, options: dict[str, Any]) -> dict[str, Any] | None:
    response = client.http.get("/v1/capabilities")
    if response.status_code != 200:
        fail(response)
        return None
    with reading(response):
        return _pool_of(response.json().get("pools", []), options)


def _pool_of(pools: list[dict[str, Any]], options: dict[str, Any]) -> dict[str, Any] | None:
    wanted = options.get("pool")
    for pool in pools:
        if wanted is not None and pool["pool_id"] != wanted:
            continue
        if options.get("engine") and pool["engine"] != options["engine"]:
            continue
        if options.get("model") and pool["model_id"] != options["model"]:
            continue
        if wanted is None and not pool["ready"]:
            continue
        return dict(pool)
    asked = " ".join(
        f"--{name} {options[name]}" for name in ("pool", "engine", "model") if options.get(name)
    )
    served = "; ".join(
        f"{p['pool_id']} ({p['engine']}, {p['model_id']}{'' if p['ready'] else ', not Ready'})"
        for p in pools
    )
    click.echo(
        f"llorch: no Ready pool matches{' ' + asked if asked else ''}; "
        f"pools: {printable(served) or 'none'}",
        err=True,
    )
    return None


def submit_and_stream(client: OrchClient, prompt: str, options: dict[str, Any]) -> int:
    try:
        pool = _pick_pool(client, options)
        if pool is None:
            return EXIT_ERROR
        body: dict[str, Any] = {
            "task_id": str(uuid.uuid4()),
            "session_id": options.get("session") or str(uuid.uuid4()),
            "workload": "completion",
            "model_ref": options.get("model") or pool["model_id"],
            "engine": options.get("engine") or pool["engine"],
            "ctx": options.get("ctx") or pool["ctx_max"] or 2048,
            "priority": options["priority"],
            "max_tokens": options["max_tokens"],
            "deadline_ms": options["deadline_ms"],
            "prompt": prompt,
        }
        if options.get("seed") is not None:
            body["seed"] = options["seed"]
        response = client.http.post("/v1/tasks", json=body)
        if response.status_code != 202:
            return fail(response)
        with reading(response):
            admitted = response.json()
            task_id = str(admitted["task_id"])
            click.echo(
                printable(
                    f"task {task_id} on {admitted.get('pool_id')}: queue position "
                    f"{admitted['queue_position']}, predicted start in "
                    f"{admitted['predicted_start_ms']} ms"
                ),
                err=True,
            )
        return _stream_until_interrupted(client, task_id)
    except httpx.TransportError as exc:
        return cannot_reach(client, exc, "; is `make run` up?")


def _stream_until_interrupted(client: OrchClient, task_id: str) -> int:
    """Ctrl-C cancels the task outright (the server keeps a task whose stream closes when
    server.sse.cancel_on_disconnect is off) and says so, instead of click's bare "Aborted!"."""
    try:
        return _stream(client, task_id)
    except httpx.TransportError as exc:
        # Not "cannot reach": the server took the task, which may still run; submitting again
        # would run it twice.
        task = printable(task_id)
        click.echo(
            f"llorch: the stream of task {task} broke ({quoted(str(exc))}); the task may "
            f"still run: `llorch status` shows it, `llorch cancel {task}` ends it",
            err=True,
        )
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stdout.write("\n")
        try:
            answer = client.http.post(f"/v1/tasks/{task_id}/cancel", timeout=5.0)
            outcome = (
                "canceled" if answer.status_code == 204 else f"cancel: HTTP {answer.status_code}"
            )
        except (httpx.HTTPError, NotOrchAnswer) as exc:
            outcome = f"could not cancel it ({exc}); run `llorch cancel {task_id}`"
        click.echo(f"llorch: interrupted; task {task_id} {outcome}", err=True)
        return EXIT_INTERRUPTED


def _stream(client: OrchClient, task_id: str) -> int:
    stream = f"/v1/tasks/{task_id}/stream"
    with connect_sse(client.http, "GET", stream, timeout=STREAM_TIMEOUT) as source:
        if source.response.status_code != 200:
            source.response.read()
            return fail(source.response)
        for sse in source.iter_sse():
            with reading(source.response):
                code = _frame(sse.event, json.loads(sse.data))
            if code is not None:
                return code
    click.echo("llorch: the stream ended without a final frame", err=True)
    return EXIT_ERROR


def _frame(event: str, data: dict[str, Any]) -> int | None:
    """Shows one frame of a task's stream; the exit code once it is the last."""
    if event == "token":
        sys.stdout.write(data["t"])
        sys.stdout.flush()
    elif event == "end":
        sys.stdout.write("\n")
        state = "canceled" if data.get("canceled") else "done"
        click.echo(f"{state}: {data['tokens_out']} tokens in {data['decode_time_ms']} ms", err=True)
        return EXIT_OK
    elif event == "error":
        sys.stdout.write("\n")
        # The message may quote an engine's text: escaped, it stays one line and cannot drive
        # the terminal.
        message = f"{data['code']}: {data['message']}"
        click.echo(f"llorch: {quoted(message)}", err=True)
        return EXIT_ERROR
    return None


def cancel(client: OrchClient, task_id: str) -> int:
    try:
        response = client.http.post(f"/v1/tasks/{segment(task_id)}/cancel")
    except httpx.TransportError as exc:
        return cannot_reach(client, exc)
    if response.status_code != 204:
        return fail(response)
    click.echo(f"canceled {task_id}", err=True)
    return EXIT_OK
