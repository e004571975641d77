"""Typed config models: the shape of the YAML file (SPEC §15) plus the (rec.) keys.

Every model forbids unknown keys, so a typo fails at start-up with the key's path.
``contracts/config.schema.json`` is generated from ``Config``.
"""

from __future__ import annotations

import ipaddress
import os
import re
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from llama_orch.vocab import (
    GPU_ENGINES,
    DeterminismLevel,
    Engine,
    FullPolicy,
    Priority,
    ProvisioningMode,
    Workload,
)

PositiveInt = Annotated[int, Field(gt=0)]
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
NonNegativeInt = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def parse_host_port(value: str) -> tuple[str, int]:
    """Split ``host:port`` (``[v6]:port`` for IPv6); raises ValueError with the allowed shape."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError(f"expected host:port (e.g. 127.0.0.1:8080), got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port must be 0..65535, got {port}")
    return host.strip("[]"), port


def check_http_url(value: str) -> str:
    """An http(s) URL with a host and a valid port; raises ValueError saying what is wrong."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError as exc:  # an unclosed [IPv6] host, a port beyond 65535
        raise ValueError(f"{value!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"expected an http:// or https:// URL with a host, got {value!r}")
    del port
    return value


def is_loopback_host(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and ``localhost``."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class SseConfig(_Strict):
    channel_cap: PositiveInt = 32
    microbatch: bool = False
    microbatch_max_delay_ms: PositiveInt = 10
    microbatch_max_tokens: PositiveInt = 32
    heartbeat_ms: NonNegativeInt = 0
    cancel_on_disconnect: bool = True
    metrics_frame_interval_ms: PositiveInt = 1000
    #: A client that reads nothing for this long has its task canceled and its slot freed.
    stall_limit_ms: PositiveInt = 30_000


class PoolSseConfig(_Strict):
    """Per-pool overrides of ``server.sse`` micro-batching; unset keys keep the server's."""

    microbatch: bool | None = None
    microbatch_max_delay_ms: PositiveInt | None = None
    microbatch_max_tokens: PositiveInt | None = None


class TlsConfig(_Strict):
    """Serve HTTPS with this certificate; HTTP/2 is then negotiated with ALPN (OC-CTRL-2025).

    Relative paths resolve against the config file's directory.
    """

    certfile: str
    keyfile: str


class ConnectionsConfig(_Strict):
    """Bounds on what one client connection may hold (docs/security.md, "Connections")."""

    #: Connections served at once; further ones wait in the kernel's listen backlog. The
    #: server lowers it to fit the open-file limit (``ulimit -n``) it starts under.
    max: PositiveInt = 8192
    #: A connection that has sent no byte for this long is closed (Linux).
    first_byte_timeout_ms: PositiveInt = 10_000
    #: A request body must arrive in full within this long of its first read, chunked or not;
    #: otherwise the request is answered 408 and the connection closed.
    body_timeout_ms: PositiveInt = 30_000


_HostName = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9.\-\[\]:]+$")]
_Origin = Annotated[str, Field(min_length=1, max_length=255, pattern=r"^https?://[^/\s]+$")]


class ServerConfig(_Strict):
    bind_addr: str = "127.0.0.1:8080"
    #: Share the port with other processes (SO_REUSEPORT). Off: a port in use stops start-up.
    reuse_port: bool = False
    connections: ConnectionsConfig = ConnectionsConfig()
    #: Host names accepted on a loopback bind besides localhost, 127.0.0.1 and [::1].
    allowed_hosts: Annotated[list[_HostName], Field(max_length=64)] = []
    #: Browser origins (scheme://host[:port]) allowed besides the server's own.
    allowed_origins: Annotated[list[_Origin], Field(max_length=64)] = []
    auth_optional: bool = False
    trust_proxy_auth: bool = False
    auth_token_file: str | None = None
    allow_placement_overrides: bool = True
    sse: SseConfig = SseConfig()
    #: Without it the server speaks cleartext HTTP/1.1 and HTTP/2 (prior knowledge).
    tls: TlsConfig | None = None
    artifacts_dir: str = "~/.cache/llama-orch/artifacts"
    #: Largest artifact accepted by POST /v1/artifacts, as canonical JSON (413 above it).
    artifact_max_bytes: PositiveInt = 8 * 1024 * 1024
    #: Stream transcripts kept as ``trace`` artifacts; the oldest go first. 0 stores none.
    trace_retention: NonNegativeInt = 1000
    transcript_retention_s: NonNegativeInt = 600
    #: Upper bound on the bytes of finished transcripts kept for late subscribers.
    transcript_max_bytes: PositiveInt = 64 * 1024 * 1024
    #: Prompts longer than this are refused with INVALID_PARAMS before anything else.
    max_prompt_bytes: PositiveInt = 1_000_000
    #: Tasks (queued, running or finished but retained) the server tracks at once.
    max_tracked_tasks: PositiveInt = 200_000

    @field_validator("bind_addr")
    @classmethod
    def _bind_addr_shape(cls, value: str) -> str:
        parse_host_port(value)
        return value


class LoggingConfig(_Strict):
    format: Literal["json", "pretty"] = "json"
    level: Literal["debug", "info", "warning", "error"] = "info"


class SessionsConfig(_Strict):
    ttl_ms: Annotated[int, Field(gt=0, le=600_000)] = 600_000
    max_turns: PositiveInt = 8
    #: Soft TTL of session affinity (ORCH-3480): for this long after a session's last task
    #: ended, its next task goes back to the same replica when that replica has a free slot.
    affinity_ttl_ms: PositiveInt = 120_000


#: A budget key's value that switches the budget off, where ``null`` would inherit the server's.
UNLIMITED = "unlimited"
Unlimited = Literal["unlimited"]


class BudgetsConfig(_Strict):
    """Per-session budgets; ``null`` disables a budget (in a pool: inherits the server's), and
    ``unlimited`` disables it anywhere (in a pool: even when the server sets one)."""

    tokens: PositiveInt | Unlimited | None = None
    time_ms: PositiveInt | Unlimited | None = None
    cost: Annotated[float, Field(gt=0)] | Unlimited | None = None
    #: Price of one generated token in the units of ``cost``; null inherits (server: 0).
    cost_per_token: Annotated[float, Field(ge=0)] | None = None

    @field_validator("tokens", "time_ms", "cost", mode="before")
    @classmethod
    def _limit_or_unlimited(cls, value: object, info: ValidationInfo) -> object:
        """Zero, a negative number, ``false``/``off`` or another word might each mean "no
        budget" or "no allowance": say which two spellings exist instead of guessing."""
        whole = info.field_name != "cost"
        forms = (
            f"{'a whole' if whole else 'a'} number above 0, {UNLIMITED} (no budget) or null "
            "(in a pool: the server's)"
        )
        if value is None or value == UNLIMITED:
            return value
        if isinstance(value, bool):
            raise ValueError(f"expected {forms}; YAML read it as the bool {value!r}")
        if (
            not isinstance(value, int | float)
            or value <= 0
            or (whole and isinstance(value, float) and not value.is_integer())
        ):
            raise ValueError(f"expected {forms}, got {value!r}")
        return value


class NetworkPolicyConfig(_Strict):
    allow_outbound: bool = False
    allowed_hosts: list[str] = []
    allowed_schemes: list[str] = ["file"]


class TrustPolicyConfig(_Strict):
    mode: Literal["strict", "permissive"] = "permissive"
    allowed_registries: list[str] = []
    require_signature: bool = False
    require_sbom: bool = False
    #: Extra CA files for https:// sources; relative paths resolve against the config file's
    #: directory.
    ca_roots: list[str] = []


class CatalogConfig(_Strict):
    trust_policy: TrustPolicyConfig = TrustPolicyConfig()
    root: str = "~/.cache/llama-orch/catalog"
    backend: Literal["fs"] = "fs"
    #: Hugging Face endpoint for hf: refs; HF_ENDPOINT overrides it; default the public hub.
    hf_endpoint: str | None = None
    #: S3-compatible endpoint (MinIO, Ceph, ...) for s3: refs; AWS_ENDPOINT_URL_S3 overrides it.
    s3_endpoint_url: str | None = None
    #: OCI registries (host:port) reached over plain HTTP, e.g. a registry on the LAN.
    insecure_registries: list[str] = []
    #: Folders under which ``file:`` refs sent to the server (a pull, a pool reload) may lie,
    #: symlinks and ``..`` resolved; relative ones are against the config file's directory.
    #: Unset: any file the server can read. ``[]``: none.
    local_roots: list[str] | None = None

    @field_validator("hf_endpoint", "s3_endpoint_url")
    @classmethod
    def _endpoint_urls(cls, value: str | None) -> str | None:
        return check_http_url(value) if value is not None else None

    @field_validator("local_roots")
    @classmethod
    def _folders(cls, value: list[str] | None) -> list[str] | None:
        for folder in value or []:
            if not folder.strip() or "\x00" in folder:
                raise ValueError(f"{folder!r} is not a folder; give a path such as /srv/models")
        return value


class SimulatedGpu(_Strict):
    index: NonNegativeInt
    name: str
    vram_mb: PositiveInt


class GpusConfig(_Strict):
    """A simulated GPU inventory for demos and tests; without it NVML is asked."""

    simulated: list[SimulatedGpu] | None = None

    @field_validator("simulated")
    @classmethod
    def _unique_indices(cls, value: list[SimulatedGpu] | None) -> list[SimulatedGpu] | None:
        if value is not None:
            indices = [gpu.index for gpu in value]
            if len(indices) != len(set(indices)):
                raise ValueError(f"GPU indices must be unique, got {indices}")
        return value


#: What a cluster host may be called: it becomes a Ray resource (``llorch_host_<name>``) and a
#: pool's ``host``, so ``llorch node join --name`` and ``hosts[].name`` accept the same names.
HOST_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]*$"
HOST_NAME_MAX = 64

#: Provisioning modes whose engines can run on another host (a container runtime cannot yet).
_REMOTE_MODES = frozenset({"binary", "source", "package"})


class HostConfig(_Strict):
    """A GPU host of the cluster (joined with `llorch node join`); pools name it in ``host``."""

    name: Annotated[str, Field(min_length=1, max_length=HOST_NAME_MAX, pattern=HOST_NAME_PATTERN)]
    #: GPU indices on that host (as its NVML numbers them); each is booked by one replica.
    gpus: list[Annotated[int, Field(ge=0)]] = []
    #: Per-GPU VRAM the host reports when it has no NVML (demos and tests; labelled simulated).
    simulated_vram_bytes: PositiveInt | None = None


class ClusterConfig(_Strict):
    """The Ray cluster whose hosts run pools that name a ``host``."""

    #: The head's ``HOST:PORT`` (``auto``: a Ray cluster already running on this machine).
    address: str = "auto"
    #: How long a replica may stay pending for its GPUs before its launch fails.
    placement_timeout_ms: PositiveInt = 60_000
    #: The cluster token (mode 0600) every node started with (Ray token authentication).
    token_file: str | None = None
    #: How often every host's agent is asked for its GPU inventory.
    inventory_interval_ms: PositiveInt = 2_000
    #: A host whose agent has not answered within this is stale: its replicas take no new work.
    inventory_deadline_ms: PositiveInt = 2_000
    #: How long Ray lets this server wait for an unreachable head before it ends the process
    #: (Ray's own default is 60 s). The server lets go of a lost head well before: this only
    #: bounds a server that could not.
    head_exit_timeout_ms: Annotated[int, Field(ge=1_000)] = 86_400_000
    #: How long a head that still accepts connections may leave the inventory poll unanswered
    #: (a pause, a busy machine: its hosts are stale meanwhile) before it counts as lost and
    #: every cluster replica ends. A head where nothing accepts connections is lost at once.
    head_lost_after_ms: PositiveInt = 15_000

    @model_validator(mode="after")
    def _head_lost_before_ray_exits(self) -> ClusterConfig:
        if self.head_lost_after_ms >= self.head_exit_timeout_ms:
            raise ValueError(
                f"cluster.head_lost_after_ms ({self.head_lost_after_ms}) must be below "
                f"cluster.head_exit_timeout_ms ({self.head_exit_timeout_ms}): Ray would end "
                "the server before it lets go of the head; lower the first or raise the second"
            )
        return self


class MockEngineConfig(_Strict):
    """Pace and fault injection of the simulated engine (D-MOCK-01/02)."""

    ttft_ms: NonNegativeInt = 50
    tokens_per_s: Annotated[float, Field(gt=0)] = 50.0
    fail_at_token: NonNegativeInt | None = None
    fail_kind: Literal["internal", "reset", "unavailable", "timeout"] = "internal"
    hang_after_token: NonNegativeInt | None = None
    reset_at_token: NonNegativeInt | None = None
    healthy: bool = True
    ready: bool = True
    engine_version: str = "mock-1.0"
    ctx_max: PositiveInt = 8192
    #: Length of the simulated embedding vectors.
    embedding_dims: PositiveInt = 32
    #: Simulated time one embedding or rerank batch takes.
    embed_batch_ms: NonNegativeInt = 2


_SHA256 = re.compile(r"sha256:[0-9a-fA-F]{64}")


def _expandable(value: str) -> str:
    """A ``~user/...`` path names a user this machine has: every later use expands it."""
    if value.startswith("~") and os.path.expanduser(value) == value:
        user = value[1:].split("/", 1)[0]
        raise ValueError(
            f"{value}: there is no user {user!r} on this machine whose home ~{user} could "
            "stand for; write the directory out in full"
        )
    return value


#: A directory of the config's, which may start with ``~`` or ``~user``.
HomePath = Annotated[str, AfterValidator(_expandable)]


class SourceBuildConfig(_Strict):
    cmake_flags: list[str] | None = None
    generator: str | None = None
    cache_dir: HomePath | None = None


class SourceConfig(_Strict):
    repo: str
    ref: str
    submodules: bool | None = None
    build: SourceBuildConfig = SourceBuildConfig()


class ContainerConfig(_Strict):
    image: str | None = None
    tag: str | None = None
    digest: str | None = None

    @field_validator("digest")
    @classmethod
    def _digest_shape(cls, value: str | None) -> str | None:
        if value is not None and not _SHA256.fullmatch(
            value if ":" in value else f"sha256:{value}"
        ):
            raise ValueError(
                f"digest must look like sha256:<64 hex digits> (the image's manifest digest), "
                f"got {value!r}"
            )
        return value


class PackageConfig(_Strict):
    name: str | None = None
    version: str | None = None
    repo: str | None = None


class BinaryConfig(_Strict):
    url: str | None = None
    checksum: str | None = None
    install_dir: HomePath | None = None

    @field_validator("checksum")
    @classmethod
    def _checksum_shape(cls, value: str | None) -> str | None:
        # A truncated pin would otherwise be found out only after the whole download.
        if value is not None and not _SHA256.fullmatch(value):
            raise ValueError(f"checksum must look like sha256:<64 hex digits>, got {value!r}")
        return value


class ProvisionModelConfig(_Strict):
    ref: str | None = None
    #: An alias tasks may send as ``model_ref`` instead of the ref or catalog id.
    name: str | None = None
    cache_dir: str | None = None
    #: ``sha256:<hex>`` the model must hash to (its catalog digest); other bytes are refused.
    checksum: str | None = None

    @field_validator("checksum")
    @classmethod
    def _checksum_shape(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"sha256:[0-9a-fA-F]{64}", value):
            raise ValueError(f"checksum must look like sha256:<64 hex digits>, got {value!r}")
        return value.lower() if value is not None else None


class ProvisioningConfig(_Strict):
    mode: ProvisioningMode
    allow_package_installs: bool = False
    allow_binary_downloads: bool = False
    source: SourceConfig | None = None
    container: ContainerConfig | None = None
    package: PackageConfig | None = None
    binary: BinaryConfig | None = None
    model: ProvisionModelConfig | None = None
    ports: list[int] | None = None
    env: dict[str, str] | None = None
    flags: list[str] | None = None

    @model_validator(mode="after")
    def _mode_requirements(self) -> ProvisioningConfig:
        if self.mode is ProvisioningMode.SOURCE and self.source is None:
            raise ValueError("source mode requires source.repo and source.ref")
        if self.mode is ProvisioningMode.CONTAINER and (
            self.container is None or not self.container.image
        ):
            raise ValueError("container mode requires container.image")
        if self.mode is ProvisioningMode.BINARY:
            binary = self.binary
            if binary is None or not binary.url or not binary.checksum:
                raise ValueError("binary mode requires binary.url and binary.checksum")
            if not binary.checksum.startswith("sha256:"):
                raise ValueError("binary.checksum must look like sha256:<hex>")
        return self


class RestartStormConfig(_Strict):
    """Stop restarting a replica's engine after ``failures`` failures within ``window_s``."""

    failures: PositiveInt = 5
    window_s: PositiveInt = 300


class EnginesConfig(_Strict):
    """Where launched engines live and how their processes are supervised."""

    #: Engine caches: ``<cache_dir>/<engine>`` (binaries, builds, venvs).
    cache_dir: HomePath = "~/.cache/llama-orch"
    #: Per-replica logs and pid files of launched engines; left at this default it follows
    #: XDG_CACHE_HOME (``$XDG_CACHE_HOME/llama-orch/run``), as the catalog root does.
    run_dir: HomePath = "~/.cache/llama-orch/run"
    #: Longest wait from launch to a healthy engine before the launch counts as failed.
    startup_timeout_ms: PositiveInt = 300_000
    #: Grace between SIGTERM and SIGKILL when an engine stops.
    stop_timeout_ms: PositiveInt = 10_000
    #: Consecutive failed health probes of a running engine that count as a hang.
    hang_after_failed_probes: PositiveInt = 3
    restart_storm: RestartStormConfig = RestartStormConfig()
    #: A provisioning step (clone, fetch, configure, build, pull, install) that prints nothing
    #: for this long is hung: it is killed and the preparation fails (it is tried again).
    provision_idle_timeout_ms: PositiveInt = 3_600_000
    #: A replica's engine log past this many bytes is moved to ``<log>.1`` (replacing the
    #: previous one), while the engine runs as at its next launch: a replica keeps two at most.
    log_max_bytes: int = Field(default=64 * 2**20, ge=64 * 1024)


class QueueConfig(_Strict):
    capacity: PositiveInt = 64
    full_policy: FullPolicy = FullPolicy.REJECT


class PriorityClassConfig(_Strict):
    name: Priority
    queue_capacity: PositiveInt | None = None
    rate_limit_rps: PositiveInt | None = None
    weight: PositiveInt | None = None


class AdmissionConfig(_Strict):
    priorities: list[PriorityClassConfig] = []

    @field_validator("priorities")
    @classmethod
    def _unique_names(cls, value: list[PriorityClassConfig]) -> list[PriorityClassConfig]:
        names = [p.name.value for p in value]
        if len(names) != len(set(names)):
            raise ValueError(f"priority class names must be unique, got {names}")
        return value


class TimeoutsConfig(_Strict):
    wall_ms: PositiveInt = 300_000
    idle_ms: PositiveInt = 30_000


class CircuitBreakerConfig(_Strict):
    failures: PositiveInt = 5
    window_s: PositiveInt = 300
    cooldown_s: PositiveInt = 30


class BackoffConfig(_Strict):
    initial_ms: PositiveInt = 1000
    factor: Annotated[float, Field(ge=1.0)] = 2.0
    max_ms: PositiveInt = 60_000
    jitter: bool = True


#: Upstream connections beyond ``slots`` when ``http.max_connections`` is unset: room for the
#: connections of canceled streams that are still closing (probes have a pool of their own).
UPSTREAM_HEADROOM = 8


class HttpConfig(_Strict):
    """How llama-orch talks to one upstream engine (ORCH-3610, ORCH-3612)."""

    connect_timeout_ms: PositiveInt = 2000
    #: Stream establishment: from sending a generation request to its response headers.
    first_byte_timeout_ms: PositiveInt = 30_000
    #: Longest silence between two reads of an upstream response, mid-stream included.
    read_timeout_ms: PositiveInt = 30_000
    #: Bound on each health/props/version probe, so a hung engine cannot stall readiness.
    probe_timeout_ms: PositiveInt = 5000
    #: Extra attempts for idempotent calls (health, props, version); never for generation.
    retries: Annotated[int, Field(ge=0, le=10)] = 2
    #: Pooled keep-alive connections to this upstream, per replica; at least the pool's
    #: ``slots`` (every running task holds one). Unset: ``slots`` + 8 (probes and headroom).
    max_connections: PositiveInt | None = None
    #: Offer HTTP/2 (used when the upstream agrees via TLS ALPN; plain http stays HTTP/1.1).
    http2: bool = True
    verify_tls: bool = True
    #: Explicit proxy URL; environment proxy variables are never used (D-HTTP-03).
    proxy: str | None = None


#: Workloads an engine's adapter has no route for (docs/adapters.md): a pool listing one would
#: take such tasks only to fail each of them.
_UNSERVED_WORKLOADS: dict[Engine, frozenset[Workload]] = {
    Engine.TRITON: frozenset({Workload.EMBEDDING, Workload.RERANK}),
    Engine.OPENAI: frozenset({Workload.RERANK}),
}


class PoolConfig(_Strict):
    id: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]
    engine: Engine
    #: A ModelRef; for ``engine: mock`` a plain model name that tasks send as ``model_ref``.
    model: Annotated[str, Field(min_length=1)]
    quant: str | None = None
    ctx: PositiveInt | None = None
    devices: list[Annotated[int, Field(ge=0)]] | None = None
    tensor_split: list[Annotated[float, Field(gt=0)]] | None = None
    preload: bool = True
    require_same_engine_version: bool = True
    sampler_profile_version: str | None = None
    #: ``strict``: engines llama-orch launches run one sequence at a time with continuous
    #: batching off (llama.cpp ``--parallel 1 --no-cont-batching``, vLLM ``--max-num-seqs 1``),
    #: so a seed gives the same tokens whatever else runs; needs ``slots: 1``.
    determinism: DeterminismLevel = DeterminismLevel.BEST_EFFORT
    engine_version: str | None = None
    endpoint: str | None = None
    api_key_env: str | None = None
    #: Which OpenAI-compatible route vllm/openai pools use; null picks the engine's default
    #: (vllm: completions, openai: chat). Other engines use their native route.
    upstream_api: Literal["completions", "chat"] | None = None
    slots: PositiveInt = 1
    replicas: PositiveInt = 1
    #: What the pool's engine serves; placement sends a task only to a pool serving its workload.
    supported_workloads: Annotated[list[Workload], Field(min_length=1)] = [Workload.COMPLETION]
    #: Most texts sent to the engine in one embedding or rerank call; longer requests are split.
    embedding_batch: Annotated[int, Field(ge=1, le=4096)] = 32
    provisioning: ProvisioningConfig | None = None
    #: The cluster host that runs this pool's replicas (``hosts``); unset: this machine.
    host: str | None = None
    #: Instead of ``host``: cluster hosts the replicas are spread over, replica i on the
    #: (i mod n)-th; each replica books the same device mask on its own host.
    hosts: Annotated[list[str], Field(max_length=64)] = []
    queue: QueueConfig = QueueConfig()
    admission: AdmissionConfig = AdmissionConfig()
    timeouts: TimeoutsConfig = TimeoutsConfig()
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()
    backoff: BackoffConfig = BackoffConfig()
    http: HttpConfig = HttpConfig()
    budgets: BudgetsConfig | None = None
    #: Micro-batch overrides for this pool's streams (§17.14); the rest of server.sse applies.
    sse: PoolSseConfig | None = None
    mock: MockEngineConfig | None = None

    @property
    def cluster_hosts(self) -> list[str]:
        """The cluster hosts the replicas run on, in order (empty: this machine)."""
        return list(self.hosts) or ([self.host] if self.host is not None else [])

    def host_for(self, replica_id: str) -> str | None:
        """The cluster host of replica ``r<i>`` (None: this machine)."""
        hosts = self.cluster_hosts
        if not hosts:
            return None
        number = replica_id.removeprefix("r")
        return hosts[(int(number) if number.isdigit() else 0) % len(hosts)]

    @field_validator("devices")
    @classmethod
    def _a_real_mask(cls, value: list[int] | None) -> list[int] | None:
        if value is None:
            return value
        if not value:
            # CUDA_VISIBLE_DEVICES= hides every GPU: a real engine would run on the CPU.
            raise ValueError(
                "must name at least one GPU (leave devices out to use every GPU); there is no "
                "CPU fallback"
            )
        repeated = sorted({i for i in value if value.count(i) > 1})
        if repeated:
            raise ValueError(f"names GPUs {repeated} more than once")
        return value

    @model_validator(mode="after")
    def _cross_field_rules(self) -> PoolConfig:  # noqa: C901 - one flat list of independent rules
        if self.tensor_split is not None and len(self.tensor_split) != len(self.devices or []):
            raise ValueError("tensor_split must have as many entries as devices")
        if self.engine is Engine.MOCK:
            if self.provisioning is not None:
                raise ValueError("a mock pool is simulated in-process; remove provisioning")
        else:
            if self.mock is not None:
                raise ValueError(f"mock options apply only to engine: mock, not {self.engine}")
            if self.provisioning is None:
                raise ValueError(
                    f"engine {self.engine} needs provisioning (e.g. mode: external with endpoint)"
                )
            if self.provisioning.mode is ProvisioningMode.EXTERNAL and not self.endpoint:
                raise ValueError("provisioning.mode external requires endpoint (the engine URL)")
            ref = self.provisioning.model.ref if self.provisioning.model else None
            if ref is not None and ref != self.model:
                raise ValueError(
                    f"model ({self.model!r}) and provisioning.model.ref ({ref!r}) differ; "
                    "pools[].model is canonical, set only that"
                )
        if self.endpoint is not None:
            try:
                check_http_url(self.endpoint)
            except ValueError as exc:
                raise ValueError(f"endpoint: {exc}") from None
        if self.upstream_api is not None and self.engine not in (Engine.VLLM, Engine.OPENAI):
            raise ValueError(f"upstream_api applies to vllm and openai pools, not {self.engine}")
        if self.api_key_env is not None and not _ENV_NAME.fullmatch(self.api_key_env):
            raise ValueError(
                f"api_key_env names an environment variable (e.g. OPENAI_API_KEY), "
                f"got {self.api_key_env!r}"
            )
        if self.http.max_connections is not None and self.http.max_connections < self.slots:
            raise ValueError(
                f"http.max_connections ({self.http.max_connections}) is below slots "
                f"({self.slots}): tasks beyond it would wait for a connection and fail "
                "connecting; raise it or leave it unset (slots + 8)"
            )
        if (
            self.engine is Engine.OPENAI
            and self.provisioning is not None
            and self.provisioning.mode is not ProvisioningMode.EXTERNAL
        ):
            raise ValueError("an openai pool is always provisioning.mode: external")
        unserved = sorted(
            w.value
            for w in _UNSERVED_WORKLOADS.get(self.engine, ())
            if w in self.supported_workloads
        )
        if unserved:
            raise ValueError(
                f"supported_workloads lists {unserved}, which llama-orch cannot route to "
                f"{self.engine} engines; serve them from a pool of an engine that has the "
                "route (docs/adapters.md)"
            )
        if self.determinism is DeterminismLevel.STRICT and self.slots != 1:
            raise ValueError(
                f"determinism strict runs one sequence per replica; set slots: 1 (got "
                f"{self.slots}) and add replicas for concurrency"
            )
        return self

    @property
    def max_connections(self) -> int:
        """Upstream connections per replica: ``http.max_connections``, or ``slots`` + 8."""
        return self.http.max_connections or self.slots + UPSTREAM_HEADROOM

    @property
    def is_gpu_engine(self) -> bool:
        return self.engine in GPU_ENGINES


class Config(_Strict):
    """The whole config file."""

    server: ServerConfig = ServerConfig()
    logging: LoggingConfig = LoggingConfig()
    sessions: SessionsConfig = SessionsConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    network_policy: NetworkPolicyConfig = NetworkPolicyConfig()
    catalog: CatalogConfig = CatalogConfig()
    gpus: GpusConfig = GpusConfig()
    engines: EnginesConfig = EnginesConfig()
    cluster: ClusterConfig = ClusterConfig()
    hosts: list[HostConfig] = []
    pools: Annotated[list[PoolConfig], Field(min_length=1)]

    @model_validator(mode="after")
    def _pool_rules(self) -> Config:
        ids = [pool.id for pool in self.pools]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"pool ids must be unique; repeated: {duplicates}")
        self._host_rules()
        if self.gpus.simulated is not None:
            known = {gpu.index for gpu in self.gpus.simulated}
            for pool in self.pools:
                if pool.cluster_hosts:
                    continue
                missing = sorted(set(pool.devices or []) - known)
                if missing:
                    raise ValueError(
                        f"pool {pool.id!r} uses devices {missing} that the simulated inventory "
                        f"does not declare (declared: {sorted(known)})"
                    )
        return self

    def _host_rules(self) -> None:
        names = [h.name for h in self.hosts]
        if len(names) != len(set(names)):
            raise ValueError(f"host names must be unique, got {names}")
        hosts = {h.name: h for h in self.hosts}
        for pool in self.pools:
            if pool.host is not None and pool.hosts:
                raise ValueError(f"pool {pool.id!r}: give host or hosts, not both")
            if len(set(pool.hosts)) != len(pool.hosts):
                raise ValueError(f"pool {pool.id!r}: hosts must be unique, got {pool.hosts}")
            for name in pool.cluster_hosts:
                _pool_host_rules(pool, name, hosts.get(name), names)


def _pool_host_rules(
    pool: PoolConfig, name: str, host: HostConfig | None, names: list[str]
) -> None:
    if host is None:
        raise ValueError(
            f"pool {pool.id!r} names host {name!r}, which hosts does not declare "
            f"(declared: {names})"
        )
    if pool.provisioning is None or pool.provisioning.mode.value not in _REMOTE_MODES:
        raise ValueError(
            f"pool {pool.id!r} on host {name!r} needs provisioning mode binary, "
            "source or package (llama-orch launches its engine there)"
        )
    missing = sorted(set(pool.devices or []) - set(host.gpus))
    if not pool.devices or missing:
        raise ValueError(
            f"pool {pool.id!r} on host {name!r} must give devices among that "
            f"host's gpus {host.gpus} (missing: {missing or 'devices'})"
        )
