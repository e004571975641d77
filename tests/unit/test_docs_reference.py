"""The reference pages name what the product has: every config key, every metric, no others."""

from __future__ import annotations

import json
import re
import typing
from collections.abc import Iterator
from pathlib import Path

import click
import jsonschema
import pytest
import yaml
from pydantic import BaseModel

from llama_orch.cli.main import cli
from llama_orch.config import Config, read_config_file
from llama_orch.errors import ErrorKind
from llama_orch.server.errors import STATUS

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted(ROOT.joinpath("docs").glob("*.md"))]
#: A dotted key in backticks, such as `server.sse.heartbeat_ms` or `pools[].http.retries`.
DOTTED = re.compile(r"`([a-z_]+(?:\[\])?(?:\.[a-z_0-9]+(?:\[\])?)+)")
#: Pool sub-sections the pages name without their `pools[].` prefix.
POOL_SECTIONS = ("provisioning", "admission", "http", "mock", "queue", "timeouts")
#: Dotted names that look like keys but are not: a file, an ASGI message type.
NOT_KEYS = frozenset({"engines.json", "http.disconnect"})


def key_paths(model: type[BaseModel], prefix: str = "") -> Iterator[str]:
    """Every key of the config file as a dotted path (list items have no index: `pools.id`)."""
    for name, field in model.model_fields.items():
        path = f"{prefix}{name}"
        yield path
        pending: list[object] = [field.annotation]
        while pending:
            annotation = pending.pop()
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                yield from key_paths(annotation, f"{path}.")
                break
            pending.extend(typing.get_args(annotation))


KEYS = set(key_paths(Config))


def test_every_config_key_is_in_the_configuration_page() -> None:
    """docs/configuration.md names every key (its leaf name at least), so none is hidden."""
    page = (ROOT / "docs/configuration.md").read_text(encoding="utf-8")
    missing = [
        key
        for key in sorted(KEYS)
        if not re.search(rf"(?<![A-Za-z_]){re.escape(key.rsplit('.', 1)[-1])}(?![A-Za-z_])", page)
    ]
    assert [] == missing


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_dotted_config_key_named_exists(page: Path) -> None:
    """A key a page names as `section.key` is one the config file accepts."""
    sections = (*Config.model_fields, *POOL_SECTIONS)
    unknown = []
    for match in DOTTED.finditer(page.read_text(encoding="utf-8")):
        key = match.group(1).replace("[]", "")
        head = key.split(".", 1)[0]
        if head not in sections or key in NOT_KEYS:
            continue
        if (key if head in Config.model_fields else f"pools.{key}") not in KEYS:
            unknown.append(key)
    assert [] == unknown


def test_metrics_table_is_the_contract() -> None:
    """docs/observability.md's metrics table lists exactly ci/metrics.lint.json's families."""
    contract = json.loads((ROOT / "ci/metrics.lint.json").read_text(encoding="utf-8"))
    expected = {
        m["name"]: (m["type"], m["labels"], m["max_series"], m["status"])
        for m in contract["metrics"]
    }
    page = (ROOT / "docs/observability.md").read_text(encoding="utf-8")
    row = re.compile(r"^\| `([a-z_]+)`(?: \((\w+)\))? \| (\w+)[^|]* \| ([^|]*) \| (\d+) \|$", re.M)
    documented = {
        name: (
            kind,
            [label.strip() for label in labels.split(",") if label.strip() != "—"],
            int(budget),
            status or "required",
        )
        for name, status, kind, labels, budget in row.findall(page)
    }
    assert expected == documented
    flat = " ".join(page.split())
    missing = [
        f"{label} {n}"
        for label, n in contract["label_budgets"].items()
        if not re.search(rf"\b{label} {n}\b", flat)
    ]
    assert [] == missing, "label budgets the page does not state"


def test_error_table_has_every_code_and_its_status() -> None:
    """docs/api.md's error table lists every error code with the status the server answers."""
    page = (ROOT / "docs/api.md").read_text(encoding="utf-8")
    table = page[page.index("| code | HTTP | retriable |") :].split("\n\n", 1)[0]
    documented: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        codes, http = line.split("|")[1:3]
        for code in re.findall(r"`([A-Z_]+)`", codes):
            documented[code] = http
    assert sorted(ErrorKind) == sorted(documented)
    wrong = {
        kind.value: documented[kind.value]
        for kind in ErrorKind
        if str(STATUS[kind]) not in documented[kind.value]
    }
    assert {} == wrong


#: A repository file or folder in backticks: `tests/unit/core/test_prediction.py`, `server/`.
REPO_PATH = re.compile(
    r"`((?:src|tests|llama_orch|examples|contracts|bench|ci|docs|contrib|server|dispatch|pool|"
    r"adapters|observability|cli|core|catalog|provisioners|auth|config|artifacts)/"
    r"[A-Za-z0-9_./-]*(?:\.[a-z]+|/))`"
)


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_repository_path_named_exists(page: Path) -> None:
    """A file or folder a page points at is there (from the root, src/ or the package)."""
    missing = [
        name
        for name in REPO_PATH.findall(page.read_text(encoding="utf-8"))
        if not any((base / name).exists() for base in (ROOT, ROOT / "src", ROOT / "src/llama_orch"))
    ]
    assert [] == missing


#: `llorch` followed by words and options, as pages write commands (`llorch models --local pull`).
COMMAND = re.compile(r"(?:^|[`\s(/])llorch((?: +(?:-{1,2}[a-z][a-z-]*|[a-z][a-z-]*))+)", re.M)


def _option_problems(words: list[str]) -> list[str]:
    """Options a command line gives to a command that lacks them (a group's options go before
    its subcommand, as click requires)."""
    command: click.Command = cli
    problems = []
    for word in words:
        if word.startswith("-"):
            names = {name for param in command.params for name in param.opts + param.secondary_opts}
            if word not in names | {"--help"}:
                problems.append(f"{word} is not an option of {command.name}")
        elif isinstance(command, click.Group):
            if word not in command.commands:
                break  # prose, or the group's argument
            command = command.commands[word]
    return problems


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_every_command_line_shown_runs(page: Path) -> None:
    """Each `llorch ...` a page shows names real subcommands, and options where they belong."""
    wrong = {
        f"llorch{match.group(1)}": problems
        for match in COMMAND.finditer(page.read_text(encoding="utf-8"))
        if (problems := _option_problems(match.group(1).split()))
    }
    assert {} == wrong


#: A fenced block, or an inline code span, of a page.
CODE = re.compile(r"```.*?```|`[^`\n]+`", re.S)
#: The model (or engine) an example request names, in JSON or as a Python keyword argument.
MODEL = re.compile(r"""["']?\bmodel(?:_ref)?["']?\s*[:=]\s*["']([^"']+)["']""")
ENGINE = re.compile(r"""["']engine["']\s*:\s*["']([^"']+)["']""")


def _demo_served() -> tuple[set[str], set[str]]:
    demo = read_config_file(ROOT / "examples/demo.yaml")
    return {p.model for p in demo.pools} | {p.id for p in demo.pools}, {
        p.engine.value for p in demo.pools
    }


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_requests_to_the_demo_name_what_it_serves(page: Path) -> None:
    """An example sent to the demo's address (`make run`: port 8080) names a model and an engine
    the demo config serves, so it answers as the page says instead of 404 or 503."""
    models, engines = _demo_served()
    wrong = []
    for match in CODE.finditer(page.read_text(encoding="utf-8")):
        code = match.group(0)
        if ":8080" not in code:
            continue
        wrong += [m for m in MODEL.findall(code) if m not in models]
        wrong += [e for e in ENGINE.findall(code) if e not in engines]
    assert [] == wrong


DATA_PLANE = yaml.safe_load((ROOT / "contracts/openapi/data.yaml").read_text(encoding="utf-8"))
#: An SSE frame shown on one line: `event: token     {"t":" river","i":1}`.
FRAME_LINE = re.compile(r"^event: (\w+)\s+(\{.*\})\s*$", re.M)
FRAME_SCHEMAS = {
    "started": "Started",
    "token": "Token",
    "metrics": "Metrics",
    "end": "End",
    "error": "Error",
}


def _check_example(payload: dict[str, object], schema_name: str) -> list[str]:
    """Problems of a documented JSON example against a data-plane schema: invalid, or a field
    the schema does not name (frames allow extra fields, so a misspelt one would pass)."""
    components = DATA_PLANE["components"]
    schema = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    problems = [e.message for e in jsonschema.Draft202012Validator(schema).iter_errors(payload)]
    known = components["schemas"][schema_name]["properties"]
    return problems + [f"{schema_name} has no field {k!r}" for k in payload if k not in known]


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_json_examples_match_the_contract(page: Path) -> None:
    """One-line SSE frames and ```json error bodies on a page are valid against the committed
    data-plane schemas and use only the fields they define."""
    text = page.read_text(encoding="utf-8")
    problems = []
    for event, body in FRAME_LINE.findall(text):
        problems += _check_example(json.loads(body), FRAME_SCHEMAS[event])
    for block in re.findall(r"```json\n(.*?)```", text, re.S):
        payload = json.loads(block)
        if "code" in payload:
            problems += _check_example(payload, "ErrorEnvelope")
    assert [] == problems
