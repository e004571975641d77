"""Loading: the ONLY place that reads the config file and the environment.

``load_settings(environ, path)`` returns a frozen ``Settings``: the validated file plus the
deployment values and secrets that come from the environment (env wins over the file).
"""

from __future__ import annotations

import ssl
import stat
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from llama_orch.config._models import (
    Config,
    ProvisioningConfig,
    is_loopback_host,
    parse_host_port,
)
from llama_orch.config._quoted import quoted_in_invalid, quoted_scalars
from llama_orch.errors import ConfigError, ConfigIssue
from llama_orch.vocab import Engine, ProvisioningMode

#: Read for the model catalog and its fetchers: where the catalog lives, the HF hub and its
#: token, an S3-compatible endpoint.
CATALOG_ENV = (
    "HOME",
    "XDG_CACHE_HOME",
    "HF_ENDPOINT",
    "HF_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_ENDPOINT_URL_S3",
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the server needs to start, resolved once."""

    config: Config
    source: str
    host: str
    port: int
    auth_token: str | None = field(default=None, repr=False)
    auth_optional: bool = False
    trust_proxy_auth: bool = False
    log_format: str = "json"
    base_dir: Path = Path(".")
    #: pool id -> upstream API key, read from the variable each pool's ``api_key_env`` names.
    upstream_api_keys: Mapping[str, str] = field(default_factory=dict, repr=False)
    #: The variables the model fetchers honour (CATALOG_ENV), as they were at start-up.
    catalog_env: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def loopback_bind(self) -> bool:
        return is_loopback_host(self.host)


def catalog_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The variables the model catalog and its fetchers honour (CATALOG_ENV), as set now."""
    return {key: environ[key] for key in CATALOG_ENV if key in environ}


def read_config_file(path: str | Path) -> Config:
    """Parse and validate one YAML file; every problem comes back in one ConfigError."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(source, [ConfigIssue("<file>", f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    "<file>",
                    f"not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start}); "
                    "save the file as UTF-8",
                )
            ],
        ) from exc
    return _absolute_paths(parse_config_text(text, source), Path(path).resolve().parent)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe loader that refuses a key given twice in one mapping: PyYAML keeps the last one
    silently, so a second ``pools:`` block would replace the first without a word."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            if not isinstance(key, Hashable):
                continue  # the base class refuses an unhashable key with its own message
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (it is given twice)", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, source: str = "<config>") -> Config:
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "<file>"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(source, [ConfigIssue(where, f"YAML syntax error: {problem}")]) from exc
    if not isinstance(raw, dict):
        raise ConfigError(source, [ConfigIssue("<root>", "expected a mapping with a pools: key")])
    try:
        config = Config.model_validate(raw)
    except ValidationError as exc:
        quoted = quoted_in_invalid(Config, raw, text, _UniqueKeyLoader, exc)
        raise ConfigError(source, _issues_from(exc) + quoted) from exc
    problems = quoted_scalars(raw, config, text, _UniqueKeyLoader) + not_available_yet(config)
    if problems:
        raise ConfigError(source, problems)
    return config


def not_available_yet(config: Config) -> list[ConfigIssue]:
    """Keys the schema accepts but nothing acts on (yet, or for this pool): refused rather
    than silently ignored."""
    issues = []
    for index, pool in enumerate(config.pools):
        where = f"pools.{index}"
        external_engine = (
            pool.provisioning is not None and pool.provisioning.mode is ProvisioningMode.EXTERNAL
        )
        external = pool.provisioning is None or external_engine
        if pool.engine_version is not None:
            issues.append(
                ConfigIssue(
                    f"{where}.engine_version",
                    "not available yet: a pool cannot pin an engine version; the engine "
                    "reports its own (GET /v1/capabilities)",
                )
            )
        if not pool.require_same_engine_version:
            issues.append(
                ConfigIssue(
                    f"{where}.require_same_engine_version",
                    "not available yet: the replicas of a pool always run one engine version",
                )
            )
        if not pool.preload:
            issues.append(
                ConfigIssue(
                    f"{where}.preload",
                    "not available yet: every pool's engines start, model loaded, when the "
                    "server does (or with their pool's reload); remove it",
                )
            )
        if not external_engine and pool.endpoint is not None:
            issues.append(
                ConfigIssue(
                    f"{where}.endpoint",
                    "endpoint is where an engine someone else started listens "
                    "(provisioning.mode external); llama-orch gives the engines it starts a "
                    "port of its own, and a mock pool runs in-process; remove it",
                )
            )
        if pool.engine is Engine.MOCK and pool.api_key_env is not None:
            issues.append(
                ConfigIssue(
                    f"{where}.api_key_env",
                    "a mock pool runs in-process and is sent no upstream key; remove it",
                )
            )
        # Shapes how an engine is launched; an engine started by someone else has its own.
        if external and pool.tensor_split is not None:
            issues.append(
                ConfigIssue(
                    f"{where}.tensor_split",
                    "tensor_split has no effect on an engine llama-orch does not start "
                    "(engine mock or provisioning.mode external); remove it",
                )
            )
        if pool.provisioning is not None:
            issues += _provisioning_issues(f"{where}.provisioning", pool.provisioning)
    return issues


#: The block of ``provisioning`` each mode reads; the others would be ignored.
_MODE_BLOCKS = ("source", "container", "package", "binary")


def _provisioning_issues(where: str, prov: ProvisioningConfig) -> list[ConfigIssue]:
    """Provisioning keys the pool's mode never reads, each refused with what to do instead."""
    mode = prov.mode.value
    issues = [
        ConfigIssue(
            f"{where}.{block}",
            f"{block} applies to provisioning.mode {block}, not {mode}; remove it",
        )
        for block in _MODE_BLOCKS
        if block != mode and getattr(prov, block) is not None
    ]
    if prov.ports is not None:
        issues.append(
            ConfigIssue(
                f"{where}.ports",
                "not available yet: llama-orch picks a free port for each replica itself",
            )
        )
    if prov.model is not None and prov.model.cache_dir is not None:
        issues.append(
            ConfigIssue(
                f"{where}.model.cache_dir",
                "not available yet: models live in the catalog (catalog.root); set that instead",
            )
        )
    if prov.mode is ProvisioningMode.EXTERNAL:
        # An engine started by someone else: nothing here reaches it.
        launch_only = {
            "flags": prov.flags is not None,
            "env": prov.env is not None,
            "allow_package_installs": prov.allow_package_installs,
            "allow_binary_downloads": prov.allow_binary_downloads,
            "model.checksum": prov.model is not None and prov.model.checksum is not None,
        }
        issues += [
            ConfigIssue(
                f"{where}.{key}",
                f"{key} has no effect on an engine llama-orch does not start "
                "(provisioning.mode external); remove it",
            )
            for key, set_here in launch_only.items()
            if set_here
        ]
    return issues


def _issues_from(exc: ValidationError) -> list[ConfigIssue]:
    issues = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(part) for part in err["loc"]) or "<root>"
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown key (check the spelling; see contracts/config.schema.json)"
        elif err["type"] == "enum" and "expected" in err.get("ctx", {}):
            message = f"must be one of {err['ctx']['expected']}, got {err['input']!r}"
        elif err["type"] == "literal_error":
            message = f"{message}, got {err['input']!r}"
        elif err["type"] == "string_type" and isinstance(err["input"], bool | int | float):
            # YAML 1.1 reads yes/no/on/off as booleans and 1e3 or 0x10 as numbers.
            kind = type(err["input"]).__name__
            message = f"{message}; YAML read it as the {kind} {err['input']!r}: quote it"
        issues.append(ConfigIssue(path, message))
    return issues


def _env_bool(environ: Mapping[str, str], key: str, default: bool) -> bool:
    raw = environ.get(key)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError("environment", [ConfigIssue(key, f"expected true or false, got {raw!r}")])


def _env_int(environ: Mapping[str, str], key: str) -> int | None:
    raw = environ.get(key)
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError as exc:
        raise ConfigError(
            "environment", [ConfigIssue(key, f"expected an integer, got {raw!r}")]
        ) from exc


def bearer_token_problem(token: str) -> str | None:
    """Why ``token`` cannot travel in an ``Authorization: Bearer`` header, else None: a
    space or a non-ASCII character would make a token no client can present."""
    if token and all("!" <= char <= "~" for char in token):
        return None
    if not token:
        return "is empty"
    return "holds spaces or non-ASCII characters; mint one with `llorch token new`"


def read_token_file(path: str | Path) -> str:
    """A token file's token, stripped. Raises OSError when the file cannot be read and
    ValueError (its message completes "the token file ...") when it holds no usable token."""
    try:
        token = Path(path).expanduser().read_text(encoding="utf-8").strip()
    except UnicodeDecodeError as exc:
        raise ValueError("is not UTF-8 text; mint one with `llorch token new`") from exc
    problem = bearer_token_problem(token)
    if problem:
        raise ValueError(problem)
    return token


def check_cluster_token(path: Path) -> None:
    """Refuse a cluster token Ray would not take, or one others can read: every node's
    ``ray start`` and the server's connection use it. ValueError says what to do."""
    try:
        mode = path.stat().st_mode
        token = read_token_file(path)
    except OSError as exc:
        raise ValueError(
            f"cannot read the cluster token {path}: {exc.strerror or exc}; copy it from the "
            f"head's host (`scp -p`) or make one with `llorch token new --file {path}`"
        ) from exc
    except ValueError as exc:
        raise ValueError(f"the cluster token file {path} {exc}") from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ValueError(f"the cluster token {path} is readable by others; run `chmod 600 {path}`")
    if len(token) < 32:
        raise ValueError(
            f"the cluster token in {path} is too short; use `llorch token new --file {path}`"
        )


def _cluster_token(config: Config) -> list[ConfigIssue]:
    token_file = config.cluster.token_file
    if token_file is None or not any(pool.cluster_hosts for pool in config.pools):
        return []
    try:
        check_cluster_token(Path(token_file).expanduser())
    except ValueError as exc:
        return [ConfigIssue("cluster.token_file", str(exc))]
    return []


def _read_token_file(path: str, key: str) -> str:
    try:
        return read_token_file(path)
    except OSError as exc:
        raise ConfigError(
            "environment", [ConfigIssue(key, f"cannot read token file {path}: {exc.strerror}")]
        ) from exc
    except ValueError as exc:
        raise ConfigError("environment", [ConfigIssue(key, f"token file {path} {exc}")]) from exc


def _sse_overrides(config: Config, environ: Mapping[str, str]) -> Config:
    sse = config.server.sse
    updates: dict[str, Any] = {}
    for env_key, field_name in (
        ("ORCHD_SSE_CHANNEL_CAP", "channel_cap"),
        ("ORCHD_SSE_HEARTBEAT_MS", "heartbeat_ms"),
    ):
        value = _env_int(environ, env_key)
        if value is not None:
            updates[field_name] = value
    if "ORCHD_SSE_MICROBATCH" in environ:
        updates["microbatch"] = _env_bool(environ, "ORCHD_SSE_MICROBATCH", sse.microbatch)
    if "CANCEL_ON_DISCONNECT" in environ:
        updates["cancel_on_disconnect"] = _env_bool(
            environ, "CANCEL_ON_DISCONNECT", sse.cancel_on_disconnect
        )
    if not updates:
        return config
    merged = {**config.model_dump(mode="json")}
    merged["server"]["sse"].update(updates)
    try:
        return Config.model_validate(merged)
    except ValidationError as exc:
        raise ConfigError("environment", _issues_from(exc)) from exc


def _tls_files(config: Config, base_dir: Path) -> list[ConfigIssue]:
    """The files the server and the fetchers load certificates from, loaded once now, so a
    missing or mismatched one is a config error naming its key, not a start-up traceback."""
    issues = []
    tls = config.server.tls
    if tls is not None:
        cert, key = (resolve_path(p, base_dir) for p in (tls.certfile, tls.keyfile))
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(cert, key)
        except (OSError, ssl.SSLError) as exc:
            issues.append(
                ConfigIssue(
                    "server.tls",
                    f"certificate {cert} with key {key} does not load: "
                    f"{getattr(exc, 'strerror', None) or exc}",
                )
            )
    for index, path in enumerate(config.catalog.trust_policy.ca_roots):
        try:
            ssl.create_default_context().load_verify_locations(cafile=path)
        except (OSError, ssl.SSLError) as exc:
            issues.append(
                ConfigIssue(
                    f"catalog.trust_policy.ca_roots.{index}",
                    f"CA file {path} does not load: {getattr(exc, 'strerror', None) or exc}",
                )
            )
    return issues


def resolve_path(path: str, base_dir: Path) -> Path:
    """A path from the config file: ``~`` expanded, relative ones against the file's directory."""
    candidate = Path(path).expanduser()
    return candidate if candidate.is_absolute() else base_dir / candidate


def _relative(path: str | None, base_dir: Path) -> str | None:
    """``path`` against ``base_dir`` when it is relative; ``~`` paths and absolute ones as given
    (so a default such as ``~/.cache/llama-orch/catalog`` still reads as the default)."""
    if path is None or path.startswith("~") or Path(path).is_absolute():
        return path
    return str(base_dir / path)


def _absolute_paths(config: Config, base_dir: Path) -> Config:
    """Every directory and file the config names, relative ones made absolute against the
    config file's directory (as the server's certificate is), so whoever uses them later (the
    catalog, the engine caches, the trace store, the fetchers) finds the same place whatever
    the working directory is by then."""
    catalog = config.catalog
    trust = catalog.trust_policy
    roots = [_relative(path, base_dir) or path for path in trust.ca_roots]
    pools = []
    for pool in config.pools:
        prov = pool.provisioning
        if prov is not None and prov.source is not None and prov.source.build.cache_dir:
            build = prov.source.build
            build = build.model_copy(update={"cache_dir": _relative(build.cache_dir, base_dir)})
            prov = prov.model_copy(
                update={"source": prov.source.model_copy(update={"build": build})}
            )
        if prov is not None and prov.binary is not None and prov.binary.install_dir:
            binary = prov.binary
            binary = binary.model_copy(
                update={"install_dir": _relative(binary.install_dir, base_dir)}
            )
            prov = prov.model_copy(update={"binary": binary})
        pools.append(
            pool if prov is pool.provisioning else pool.model_copy(update={"provisioning": prov})
        )
    engines = config.engines
    return config.model_copy(
        update={
            "server": config.server.model_copy(
                update={"artifacts_dir": _relative(config.server.artifacts_dir, base_dir)}
            ),
            "catalog": catalog.model_copy(
                update={
                    "root": _relative(catalog.root, base_dir),
                    "trust_policy": trust.model_copy(update={"ca_roots": roots}),
                }
            ),
            "engines": engines.model_copy(
                update={
                    "cache_dir": _relative(engines.cache_dir, base_dir),
                    "run_dir": _relative(engines.run_dir, base_dir),
                }
            ),
            "cluster": config.cluster.model_copy(
                update={"token_file": _relative(config.cluster.token_file, base_dir)}
            ),
            "pools": pools,
        }
    )


def _upstream_api_keys(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """Each pool's upstream key; a named but unset variable fails start-up with its name."""
    keys: dict[str, str] = {}
    issues = []
    for index, pool in enumerate(config.pools):
        if pool.api_key_env is None:
            continue
        value = environ.get(pool.api_key_env, "").strip()
        if value:
            keys[pool.id] = value
        else:
            issues.append(
                ConfigIssue(
                    f"pools.{index}.api_key_env",
                    f"environment variable {pool.api_key_env} is not set or empty; export the "
                    "upstream API key under that name",
                )
            )
    if issues:
        raise ConfigError("environment", issues)
    return keys


def load_settings(
    environ: Mapping[str, str],
    path: str | Path | None = None,
    *,
    config: Config | None = None,
    bind_override: str | None = None,
) -> Settings:
    """Resolve the file (or a given ``Config``) and the environment into ``Settings``.

    Refuses a non-loopback bind without a token (AUTH-1002, OC-CONFIG-6032).
    """
    if config is None:
        if path is None:
            raise ValueError("load_settings needs a path or a config")
        config = read_config_file(path)
        source = str(path)
        base_dir = Path(path).resolve().parent
    else:
        source = "<config>"
        base_dir = Path(".").resolve()
        unbuilt = not_available_yet(config)
        if unbuilt:
            raise ConfigError(source, unbuilt)
    config = _absolute_paths(_sse_overrides(config, environ), base_dir)
    server = config.server
    unloadable = _tls_files(config, base_dir) + _cluster_token(config)
    if unloadable:
        raise ConfigError(source, unloadable)

    bind = (
        bind_override or environ.get("BIND_ADDR") or environ.get("ORCHD_ADDR") or server.bind_addr
    )
    # Where the bind address came from, so a refusal names what the operator typed.
    given = next(
        (
            name
            for name, value in (
                ("--bind", bind_override),
                ("BIND_ADDR", environ.get("BIND_ADDR")),
                ("ORCHD_ADDR", environ.get("ORCHD_ADDR")),
            )
            if value
        ),
        "server.bind_addr",
    )
    try:
        host, port = parse_host_port(bind)
    except ValueError as exc:
        raise ConfigError(
            "command line" if bind_override else "environment", [ConfigIssue(given, str(exc))]
        ) from exc

    # AUTH_TOKEN, else AUTH_TOKEN_FILE (relative to the working directory), else the file's
    # server.auth_token_file (relative to the config file, like every path in it).
    token = environ.get("AUTH_TOKEN", "").strip() or None
    problem = bearer_token_problem(token) if token else None
    if problem:
        raise ConfigError("environment", [ConfigIssue("AUTH_TOKEN", f"the token {problem}")])
    if token is None and environ.get("AUTH_TOKEN_FILE"):
        token = _read_token_file(environ["AUTH_TOKEN_FILE"], "AUTH_TOKEN_FILE")
    elif token is None and server.auth_token_file:
        token_path = resolve_path(server.auth_token_file, base_dir)
        token = _read_token_file(str(token_path), "server.auth_token_file")

    log_format = environ.get("LOG_FORMAT", config.logging.format)
    if log_format not in ("json", "pretty"):
        raise ConfigError(
            "environment",
            [ConfigIssue("LOG_FORMAT", f"must be json or pretty, got {log_format!r}")],
        )
    settings = Settings(
        config=config,
        source=source,
        host=host,
        port=port,
        auth_token=token,
        auth_optional=_env_bool(environ, "AUTH_OPTIONAL", server.auth_optional),
        trust_proxy_auth=_env_bool(environ, "TRUST_PROXY_AUTH", server.trust_proxy_auth),
        log_format=log_format,
        base_dir=base_dir,
        upstream_api_keys=_upstream_api_keys(config, environ),
        catalog_env=catalog_env(environ),
    )
    if not settings.loopback_bind and not token:
        raise ConfigError(
            source,
            [
                ConfigIssue(
                    given,
                    f"NON_LOOPBACK_WITHOUT_TOKEN (40301): binding {host}:{port} exposes the "
                    "server beyond this machine; set AUTH_TOKEN (or AUTH_TOKEN_FILE; mint one "
                    "with `llorch token new`) or bind 127.0.0.1",
                )
            ],
        )
    return settings
