"""The models the configured pools serve, as the catalog knows them.

A pool's ``model`` is a ModelRef (``hf:…``, ``file:…``, a path, a URL), a catalog id (the
normalized ref), or a plain name (mock pools, external engines). ``provisioning.model.name``
adds an alias. Tasks may name a pool's model by any of these; ``canonical`` maps them to the
pool's configured string, so the scheduling code compares one spelling.

Pools whose model is a ref and whose engine llama-orch runs (not ``external``: such an engine
serves what it was started with, possibly on another machine) are gated on the catalog: the
model must be present, Active, and fit the free VRAM of the pool's GPUs.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llama_orch.catalog.entries import Lifecycle, ModelEntry
from llama_orch.catalog.gguf import VramEstimate, estimate_vram
from llama_orch.catalog.refs import (
    FileRef,
    ModelRef,
    looks_like_ref,
    parse_ref,
    public_name,
    ref_id,
)
from llama_orch.catalog.verify import Digest, parse_digest
from llama_orch.config import PoolConfig
from llama_orch.errors import InvalidModelRef, ModelDeprecated, OrchError
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.progress import PullState
from llama_orch.vocab import ProvisioningMode

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class PoolModel:
    pool_id: str
    #: ``pools[].model`` as written in the config (what adapters and placement compare).
    configured: str
    #: The catalog id: the normalized ref, or the configured string when it is not a ref.
    model_id: str
    ref: ModelRef | None
    alias: str | None
    #: True when readiness waits for the model to be in the catalog.
    gated: bool
    ctx: int | None
    slots: int
    #: ``provisioning.model.checksum``: the digest the catalog's copy must have.
    expected: Digest | None = None
    #: A name tasks may use that holds no secret (the configured string, less a URL's
    #: credentials): what the console shows and its playground sends back.
    public: str = ""


def _pool_model(cfg: PoolConfig, base_dir: str) -> PoolModel:
    model_cfg = cfg.provisioning.model if cfg.provisioning else None
    alias = model_cfg.name if model_cfg else None
    checksum = model_cfg.checksum if model_cfg else None
    ref: ModelRef | None = None
    if looks_like_ref(cfg.model):
        try:
            ref = parse_ref(cfg.model, base_dir=base_dir)
        except InvalidModelRef:
            ref = None
    external = cfg.provisioning is not None and cfg.provisioning.mode is ProvisioningMode.EXTERNAL
    return PoolModel(
        pool_id=cfg.id,
        configured=cfg.model,
        model_id=ref_id(ref) if ref is not None else cfg.model,
        ref=ref,
        alias=alias,
        gated=ref is not None and not external,
        ctx=cfg.ctx,
        slots=cfg.slots,
        expected=parse_digest(checksum) if checksum else None,
        # A parsed ref never holds credentials (they are refused): its id is already public.
        public=ref_id(ref) if ref is not None else public_name(cfg.model),
    )


class PoolModels:
    def __init__(
        self, pools: list[PoolConfig], provisioner: ModelProvisioner, base_dir: Path
    ) -> None:
        self.provisioner = provisioner
        self.by_pool = {cfg.id: _pool_model(cfg, str(base_dir)) for cfg in pools}
        self._base_dir = str(base_dir)
        #: Pools whose model was seen to fit once; after that the engine's own use of the VRAM
        #: would make it look as if it no longer fits, so the check is not repeated.
        self._fitted: set[str] = set()
        #: pool id -> the model id a running reload moves the pool to.
        self._incoming: dict[str, str] = {}
        #: model id -> the shared lock that keeps other processes from deleting it (None:
        #: not holding, before ``hold_served`` and after ``release``).
        self._held: dict[str, BinaryIO] | None = None

    def rebind(self, cfg: PoolConfig) -> None:
        """A reload switched the pool to ``cfg.model``: gates, estimates and aliases follow it.

        Its new replicas were Ready before the switch, so the model is taken to fit: their
        engines already hold the VRAM the check would count as taken.
        """
        self.by_pool[cfg.id] = _pool_model(cfg, self._base_dir)
        self._fitted.add(cfg.id)
        self._rehold()

    def hold_served(self) -> None:
        """Hold the models the pools serve or a running reload moves them to, and let go of
        the others: a process sharing the catalog root cannot delete a held model."""
        held = self._held if self._held is not None else {}
        wanted = {m.model_id for m in self.by_pool.values() if m.gated} | set(
            self._incoming.values()
        )
        for model_id in set(held) - wanted:
            held.pop(model_id).close()
        for model_id in wanted - set(held):
            with contextlib.suppress(OrchError):  # an unwritable root: nothing to delete either
                held[model_id] = self.provisioner.store.hold(model_id)
        self._held = held

    def release(self) -> None:
        for handle in (self._held or {}).values():
            handle.close()
        self._held = None

    def _rehold(self) -> None:
        if self._held is not None:
            self.hold_served()

    def register_local(self, cfg: PoolConfig, within: tuple[str, ...] | None = None) -> None:
        """Put ``cfg``'s model in the catalog when it is a local file or directory the catalog
        gates on and does not hold yet (remote models are pulled, never fetched here).

        ``within``: catalog.local_roots folders its files must lie in when they are opened."""
        model = _pool_model(cfg, self._base_dir)
        ref = model.ref
        if ref is None or not model.gated or not isinstance(ref, FileRef):
            return
        if within is not None:
            ref = dataclasses.replace(ref, within=within)
        if self.provisioner.store.locate(ref) is None:
            self.provisioner.ensure_present(ref, model.expected)

    def registered_local(self, cfg: PoolConfig) -> str | None:
        """The catalog id of ``cfg``'s model when it is a local one the catalog holds."""
        model = _pool_model(cfg, self._base_dir)
        if not isinstance(model.ref, FileRef) or self.provisioner.store.get(model.model_id) is None:
            return None
        return model.model_id

    def entry(self, pool_id: str) -> ModelEntry | None:
        model = self.by_pool.get(pool_id)
        return self._entry_of(model) if model is not None else None

    def _entry_of(self, model: PoolModel) -> ModelEntry | None:
        if model.ref is None or self.provisioner.store.locate(model.ref) is None:
            return None
        return self.provisioner.store.get(model.model_id)

    # -- admission -----------------------------------------------------------------------------

    def canonical(self, model_ref: str) -> str:
        """The configured model string a task's ``model_ref`` names (a ref, id or alias).

        Raises MODEL_DEPRECATED when that model is Retired in the catalog; returns
        ``model_ref`` unchanged when no pool serves it (admission then says what is served).
        """
        match = self._match(model_ref)
        if match is None:
            return model_ref
        entry = self.provisioner.store.get(match.model_id) if match.ref is not None else None
        if entry is not None and entry.lifecycle is Lifecycle.RETIRED:
            raise ModelDeprecated(
                f"model {match.model_id} is Retired",
                hint=f"use another model, or `llorch models activate {match.model_id}`",
            )
        return match.configured

    def _match(self, model_ref: str) -> PoolModel | None:
        models = list(self.by_pool.values())
        for model in models:
            if model_ref in (model.configured, model.alias, model.model_id, model.public):
                return model
        if looks_like_ref(model_ref):
            try:
                wanted = ref_id(parse_ref(model_ref, base_dir=self._base_dir))
            except InvalidModelRef:
                return None
            return next((m for m in models if m.model_id == wanted), None)
        return None

    # -- readiness and placement ---------------------------------------------------------------

    def gate(
        self, pool_id: str, free_per_gpu: dict[int, int], reloading: PoolConfig | None = None
    ) -> str | None:
        """None when the pool's model is ready to serve; else what is wrong and the fix.

        ``reloading``: the config a reload starts new replicas with. Those replicas wait for
        the new model, not the one the pool serves now (a pool whose model was retired or
        deleted is rescued by a reload). Their VRAM fit is not checked: the old replicas still
        hold theirs, and the new engine reports a model it cannot load itself.
        """
        if reloading is not None and reloading.model != self._configured(pool_id):
            model = _pool_model(reloading, self._base_dir)
            return self._catalog_problem(model) if model.gated else None
        current = self.by_pool.get(pool_id)
        if current is None or not current.gated or current.ref is None:
            return None
        problem = self._catalog_problem(current)
        if problem is not None or pool_id in self._fitted:
            return problem
        problem = self.fit_problem(pool_id, free_per_gpu)
        if problem is None:
            self._fitted.add(pool_id)
        return problem

    def serving_now(self, model_id: str) -> list[str]:
        """The pools whose engines serve ``model_id`` from the catalog now."""
        return sorted(p for p, m in self.by_pool.items() if m.gated and m.model_id == model_id)

    def serving(self, model_id: str) -> list[str]:
        """The pools whose engines wait on ``model_id`` in the catalog, now or once a running
        reload switches them."""
        now = {p for p, m in self.by_pool.items() if m.gated and m.model_id == model_id}
        return sorted(now | {p for p, m in self._incoming.items() if m == model_id})

    def begin_reload(self, cfg: PoolConfig) -> None:
        """A reload of ``cfg.id`` to ``cfg``'s model started (ended by ``end_reload``)."""
        model = _pool_model(cfg, self._base_dir)
        if model.gated:
            self._incoming[cfg.id] = model.model_id
            self._rehold()

    def end_reload(self, pool_id: str) -> None:
        self._incoming.pop(pool_id, None)
        self._rehold()

    def require_active(self, cfg: PoolConfig) -> None:
        """Refuse a reload to a model the catalog holds as Retired (MODEL_DEPRECATED)."""
        model = _pool_model(cfg, self._base_dir)
        entry = self._entry_of(model) if model.gated else None
        if entry is not None and entry.lifecycle is Lifecycle.RETIRED:
            raise ModelDeprecated(
                f"cannot reload pool {cfg.id}: model {model.model_id} is Retired",
                hint=f"reload to another model, or `llorch models activate {model.model_id}`",
                pool_id=cfg.id,
            )

    def _configured(self, pool_id: str) -> str | None:
        model = self.by_pool.get(pool_id)
        return model.configured if model is not None else None

    def _catalog_problem(self, model: PoolModel) -> str | None:
        """What keeps ``model`` from serving as the catalog holds it (None: nothing)."""
        if model.ref is None:
            return None
        entry = self._entry_of(model)
        if entry is None:
            progress = self.provisioner.progress.get(model.model_id)
            if progress is not None and progress.state is PullState.RUNNING:
                snap = progress.snapshot()
                return (
                    f"model {model.model_id} is being pulled "
                    f"({snap['bytes_done'] // MIB}/{(snap['bytes_total'] or 0) // MIB} MiB)"
                )
            failure = ""
            if progress is not None and progress.error:
                failure = f" (last pull failed: {progress.error.get('message')})"
            return (
                f"model {model.model_id} is not in the catalog{failure}; run "
                f"`llorch models pull {model.model_id}`"
            )
        if entry.lifecycle is Lifecycle.RETIRED:
            return f"model {model.model_id} is Retired; `llorch models activate {model.model_id}`"
        if model.expected is not None and entry.digest != str(model.expected):
            return (
                f"model {model.model_id} in the catalog has digest {entry.digest}, not "
                f"provisioning.model.checksum {model.expected}; `llorch models rm "
                f"{model.model_id}` and pull it again, or correct the checksum"
            )
        return None

    def estimate(self, pool_id: str) -> VramEstimate | None:
        model = self.by_pool.get(pool_id)
        entry = self.entry(pool_id)
        if model is None or entry is None or entry.gguf is None:
            return None
        return estimate_vram(entry.gguf, ctx=model.ctx, slots=model.slots)

    def fit_problem(self, pool_id: str, free_per_gpu: dict[int, int]) -> str | None:
        """Why the pool's model does not fit the free VRAM of its GPUs, with the numbers."""
        estimate = self.estimate(pool_id)
        if estimate is None or not free_per_gpu:
            return None
        free = sum(free_per_gpu.values())
        if estimate.total_bytes <= free:
            return None
        per_gpu = ", ".join(f"GPU {i}: {b // MIB} MiB" for i, b in sorted(free_per_gpu.items()))
        return (
            f"model {self.by_pool[pool_id].model_id} needs {estimate.total_bytes // MIB} MiB "
            f"(weights {estimate.weights_bytes // MIB} + KV {estimate.kv_bytes // MIB} for "
            f"ctx {estimate.ctx} x {estimate.slots} slots + overhead "
            f"{estimate.overhead_bytes // MIB}) but the pool's GPUs have {free // MIB} MiB free "
            f"({per_gpu}); lower ctx or slots, pick a smaller quantization, or add devices"
        )

    def quant(self, pool_id: str) -> str | None:
        entry = self.entry(pool_id)
        return entry.gguf.file_type if entry is not None and entry.gguf is not None else None

    def digest(self, pool_id: str) -> str | None:
        entry = self.entry(pool_id)
        return entry.digest if entry is not None else None

    def stage_missing(self) -> None:
        """Start pulls for gated pools whose model is missing, where the policies allow."""
        for pool_id, model in self.by_pool.items():
            if not model.gated or model.ref is None or self.entry(pool_id) is not None:
                continue
            try:
                self.provisioner.precheck(model.ref)
            except OrchError:
                continue  # the gate's message names the pull command to run
            self.provisioner.start_pull(model.ref, model.expected)
