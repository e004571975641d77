"""The model provisioner: make a ModelRef present, verified and registered ``Active``.

``ensure_present`` looks in the catalog first and returns at once on a hit. Otherwise it takes
the model's single-flight lock (a thread lock plus an flock on ``.locks/<slug>.lock``, so two
threads or two processes pulling one ref download once), checks the outbound policy, lets the
scheme's fetcher download into ``.staging/<slug>/`` on the catalog's filesystem (resuming what
an earlier try left), verifies every digest it knows, applies the trust policy, moves the bytes
to ``models/<slug>/`` with one rename, and registers the entry. Until that last index write the
model is invisible; a pull killed at any point leaves no entry.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from llama_orch.catalog.entries import GgufInfo, Lifecycle, ModelEntry, ModelFile
from llama_orch.catalog.gguf import is_gguf, read_gguf
from llama_orch.catalog.refs import (
    FileRef,
    HfRef,
    ModelRef,
    OciRef,
    S3Ref,
    UrlRef,
    parse_ref,
    ref_id,
)
from llama_orch.catalog.store import (
    CatalogStore,
    DeleteOutcome,
    check_tree,
    fsync_dir,
    now_ms,
    writing,
)
from llama_orch.catalog.unchanged import Recheck, identity_of, recheck
from llama_orch.catalog.verify import (
    Digest,
    VerifyResult,
    descriptor_path,
    parse_digest,
    sha256_file,
    tree_digest,
)
from llama_orch.errors import (
    Conflict,
    DigestMismatch,
    InsufficientSpace,
    InvalidModelRef,
    InvalidParams,
    ModelDeprecated,
    NotFound,
    OrchError,
)
from llama_orch.observability.metrics import Metrics
from llama_orch.observability.narration import narrate
from llama_orch.provisioners.fetch.base import Fetched, Fetcher, translate_disk_full
from llama_orch.provisioners.fetch.file import open_checked
from llama_orch.provisioners.policy import OutboundPolicy, TrustPolicy
from llama_orch.provisioners.progress import PullBoard, PullProgress, PullState

#: Space kept free on the catalog's filesystem beyond the download itself.
RESERVE_BYTES = 64 * 1024 * 1024

FreeBytes = Callable[[Path], int]


def disk_free(path: Path) -> int:
    return shutil.disk_usage(path).free


class ModelProvisioner:
    def __init__(
        self,
        store: CatalogStore,
        fetchers: Mapping[str, Fetcher],
        *,
        outbound: OutboundPolicy | None = None,
        trust: TrustPolicy | None = None,
        metrics: Metrics | None = None,
        free_bytes: FreeBytes = disk_free,
        reserve_bytes: int = RESERVE_BYTES,
    ) -> None:
        self.store = store
        self.fetchers = dict(fetchers)
        self.outbound = outbound or OutboundPolicy()
        self.trust = trust or TrustPolicy()
        self.metrics = metrics
        self.free_bytes = free_bytes
        self.reserve_bytes = reserve_bytes
        #: The latest pull of each model id, for GET /v1/catalog/models/{id} and the CLI.
        self.progress = PullBoard()
        #: Set when the server stops: hashing in progress ends with ServerStopping.
        self.stopping = threading.Event()
        #: model id -> its running background pull and the digest it checks (None: none).
        self._pull_digest: dict[str, tuple[PullProgress, Digest | None]] = {}
        #: model id -> its single-flight lock and how many threads hold or wait for it.
        self._flights: dict[str, tuple[threading.Lock, int]] = {}
        self._flights_lock = threading.Lock()
        #: model id -> the lock its launch-time confirmations take (one per model served).
        self._confirming: dict[str, threading.Lock] = {}

    # -- the interface of SPEC §10 -------------------------------------------------------------

    def ensure_present_str(
        self, text: str, expected_digest: str | None = None, *, base_dir: str | None = None
    ) -> ModelEntry:
        digest = parse_digest(expected_digest) if expected_digest else None
        return self.ensure_present(parse_ref(text, base_dir=base_dir), digest)

    def ensure_present(self, ref: ModelRef, expected: Digest | None = None) -> ModelEntry:
        model_id = ref_id(ref)
        hit = self._hit(ref, model_id, expected)
        if hit is not None:
            return hit
        with self._single_flight(model_id):
            hit = self._hit(ref, model_id, expected)
            if hit is not None:
                return hit
            progress = PullProgress(model_id, on_total=self._preflight(model_id))
            self.progress[model_id] = progress
            try:
                entry = self._stage(ref, model_id, expected, progress)
            except OrchError as exc:
                progress.finish(PullState.FAILED, exc.envelope())
                raise
            except BaseException:
                progress.finish(PullState.FAILED, {"code": "INTERNAL", "message": "stopped"})
                raise
            else:
                progress.finish(PullState.DONE)
            finally:
                self.progress.settle()
            return entry

    def _hit(self, ref: ModelRef, model_id: str, expected: Digest | None) -> ModelEntry | None:
        if self.store.locate(ref) is None:
            return None
        # The answer states the model's digest and size: they must be those of its bytes now.
        entry = self.confirm(model_id)
        if entry is None:
            return None
        if expected is not None and entry.digest is not None and entry.digest != str(expected):
            raise DigestMismatch(
                f"{model_id} is in the catalog with digest {entry.digest}, not {expected}",
                hint=f"llorch models rm {model_id} and pull again, or fix the expected digest",
            )
        return entry

    @contextlib.contextmanager
    def _single_flight(self, model_id: str) -> Iterator[None]:
        with self._flights_lock:
            lock, users = self._flights.get(model_id, (threading.Lock(), 0))
            self._flights[model_id] = (lock, users + 1)
        try:
            with lock:
                with writing(self.store.root):
                    self.store.ensure_layout()
                    handle = self.store.lock_path(model_id).open("a+b")
                with handle:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
                    try:
                        yield
                    finally:
                        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        finally:
            # The last one out drops the lock: one kept per ref ever pulled would only grow.
            with self._flights_lock:
                lock, users = self._flights[model_id]
                if users == 1:
                    del self._flights[model_id]
                else:
                    self._flights[model_id] = (lock, users - 1)

    def _preflight(self, model_id: str) -> Callable[[int, int], None]:
        def check(total: int, already: int) -> None:
            stage = self.store.staging_for(model_id)
            free = self.free_bytes(stage if stage.exists() else self.store.root)
            needed = total - already + self.reserve_bytes
            if free < needed:
                raise InsufficientSpace(
                    f"{model_id} needs {_mib(needed)} MiB free under {self.store.root} "
                    f"({_mib(total - already)} MiB to download + {_mib(self.reserve_bytes)} MiB "
                    f"reserve); {_mib(free)} MiB are free",
                    hint="free space (llorch models rm ID) or move catalog.root to a larger disk",
                )

        return check

    # -- staging -------------------------------------------------------------------------------

    def _stage(
        self, ref: ModelRef, model_id: str, expected: Digest | None, progress: PullProgress
    ) -> ModelEntry:
        fetcher, host = self.precheck(ref)
        started = time.monotonic()
        narrate("catalog", "fetch", model_id, f"Fetches {model_id} from {host or 'disk'}.")
        stage = self.store.staging_for(model_id)
        local_file = isinstance(ref, FileRef)
        if not local_file:
            # Local files are registered where they lie: no staging directory to leave behind.
            stage.mkdir(parents=True, exist_ok=True)
        try:
            fetched = fetcher.fetch(ref, stage, progress, self.outbound)
        except BaseException as exc:
            if not local_file:
                # What a later try resumes from stays; an empty folder per failed ref would
                # only pile up.
                with contextlib.suppress(OSError):
                    stage.rmdir()
                # A disk that fills under a client library's own writes (hf, oci, an archive
                # unpacked) fails the pull as the fetchers' own writes do.
                if (
                    isinstance(exc, OSError)
                    and (full := translate_disk_full(exc, stage)) is not exc
                ):
                    raise full from exc
            raise
        with fetched.opened or contextlib.nullcontext():
            return self._register(model_id, expected, fetched, stage, local_file, started)

    def _register(
        self,
        model_id: str,
        expected: Digest | None,
        fetched: Fetched,
        stage: Path,
        local_file: bool,
        started: float,
    ) -> ModelEntry:
        if not local_file:
            check_tree(stage)
            _refuse_empty(fetched.path, model_id, stage)
        # Local bytes are hashed where they lie, and someone may still be writing them.
        before = _signature(fetched.readable) if local_file else None
        try:
            result, digest, files = self._verify(fetched, model_id, expected)
        except OrchError:
            raise
        except OSError as exc:
            if not local_file:
                raise
            # Local bytes are the caller's to point at: one the server cannot read is theirs
            # to fix (permissions, a device or kernel file inside a model directory).
            shown = fetched.path if fetched.opened else exc.filename or fetched.path
            raise InvalidParams(
                f"{shown} cannot be read: {exc.strerror or exc}",
                hint="name a model whose files the server's user can read",
            ) from exc
        if before is not None and _signature(fetched.readable) != before:
            raise Conflict(
                f"{fetched.path} changed while it was hashed, so its digest would name bytes "
                "that never existed whole; nothing was registered",
                hint="register it once it is completely written (a copy or download in "
                "progress), or write it elsewhere and move it into place",
            )
        decision = self.trust.decide(result, model_id)
        self._count(decision.result, decision.reason)
        if decision.result is VerifyResult.WARN:
            narrate(
                "catalog",
                "verify",
                model_id,
                f"Registers {model_id} unverified: {decision.reason}.",
                level="warning",
            )
        local_path = fetched.path if local_file else self._move_in(fetched.path, model_id, stage)
        # A local file is read through the descriptor it was checked on, never by its path again.
        read = fetched.readable if local_file else local_path
        size = sum(f.size_bytes for f in files) if files else read.stat().st_size
        # What a launch compares with the file it opens (a rename into models/ moves ctime).
        identity = None if files else identity_of(read.stat())
        entry = ModelEntry(
            id=model_id,
            ref=model_id,
            local_path=str(local_path),
            size_bytes=size,
            digest=str(digest),
            lifecycle=Lifecycle.ACTIVE,
            last_verified_ms=now_ms(),
            verification=decision.result.value,
            source=fetched.source,
            files=files,
            identity=identity,
            gguf=_gguf_of(read),
            managed=not local_file,
        )
        stored = self.store.put(entry)
        if not local_file:
            shutil.rmtree(stage, ignore_errors=True)
        self._set_state_metric(model_id, Lifecycle.ACTIVE)
        narrate(
            "catalog",
            "fetched",
            model_id,
            f"Registers {model_id}: {size} bytes, {decision.result.value}.",
            duration_ms=int((time.monotonic() - started) * 1000),
            bytes=size,
            verification=decision.result.value,
        )
        return stored

    def _verify(
        self, fetched: Fetched, model_id: str, expected: Digest | None
    ) -> tuple[VerifyResult, Digest, list[ModelFile]]:
        """Check the source's per-file sha256 and the caller's digest; FAIL raises."""
        files: list[ModelFile] = []
        checked = False
        if fetched.path.is_dir():
            for path in sorted(p for p in fetched.path.rglob("*") if p.is_file()):
                rel = path.relative_to(fetched.path).as_posix()
                member = self._hash_member(path, fetched.within).model_copy(update={"path": rel})
                claim = fetched.claimed_sha256.get(rel)
                self._compare(model_id, rel, claim, member.sha256, fetched)
                checked = checked or claim is not None
                files.append(member)
            # From the hashes just taken: reading every file again could meet other bytes.
            digest = tree_digest((f.path, f.sha256) for f in files)
        else:
            computed = fetched.computed_sha256
            digest = (
                Digest("sha256", computed)
                if computed
                else sha256_file(fetched.readable, stop=self.stopping)
            )
            claim = fetched.claimed_sha256.get("")
            self._compare(model_id, fetched.path.name, claim, digest.value, fetched)
            checked = claim is not None
        if expected is not None:
            self._compare(model_id, "the model", expected.value, digest.value, fetched)
            checked = True
        return (VerifyResult.PASS if checked else VerifyResult.WARN), digest, files

    def _hash_member(self, path: Path, within: tuple[str, ...] | None) -> ModelFile:
        """sha256, size and identity of a directory model's file, read through one checked
        descriptor (``path`` is set by the caller)."""
        try:
            with open_checked(path, within) as handle:
                fd = handle.fileno()
                sha = sha256_file(descriptor_path(fd), stop=self.stopping)
                info = os.fstat(fd)
                return ModelFile(
                    path="", size_bytes=info.st_size, sha256=sha.value, identity=identity_of(info)
                )
        except OSError as exc:
            exc.filename = str(path)  # not the descriptor's name
            raise

    def _compare(
        self, model_id: str, what: str, claim: str | None, actual: str, fetched: Fetched
    ) -> None:
        if claim is None or claim.lower() == actual:
            return
        self._count(VerifyResult.FAIL, "digest mismatch")
        # Wrong bytes are never resumed from: the next pull starts over (local files stay).
        stage = self.store.staging_for(model_id)
        if fetched.path.is_relative_to(stage):
            shutil.rmtree(stage, ignore_errors=True)
        raise DigestMismatch(
            f"{what} of {model_id} hashes to sha256:{actual}, expected sha256:{claim}",
            hint="the source changed or the download was corrupted; nothing was registered",
        )

    def _move_in(self, payload: Path, model_id: str, stage: Path) -> Path:
        """One rename from staging into ``models/<slug>/``; returns the model's path there."""
        final_dir = self.store.model_dir(model_id)
        if final_dir.exists():
            shutil.rmtree(final_dir)
        if payload.is_dir():
            os.replace(payload, final_dir)
            target = final_dir
        else:
            holder = stage / ".payload"
            holder.mkdir(exist_ok=True)
            os.replace(payload, holder / payload.name)
            os.replace(holder, final_dir)
            target = final_dir / payload.name
        fsync_dir(final_dir.parent)
        return target

    # -- background work for the control plane ------------------------------------------------

    def precheck(self, ref: ModelRef) -> tuple[Fetcher, str]:
        """The policy checks a pull would fail on, without fetching (for a synchronous 400).

        Returns the scheme's fetcher and the host it will contact ("" for local files)."""
        fetcher = self.fetchers.get(_scheme_of(ref))
        if fetcher is None:
            raise InvalidParams(f"no fetcher for {ref_id(ref)} in this build")
        scheme, host = fetcher.endpoint(ref)
        self.outbound.check(scheme, host)
        self.trust.check_source(host, ref_id(ref))
        return fetcher, host

    @staticmethod
    def is_local(ref: ModelRef) -> bool:
        return isinstance(ref, FileRef)

    def start_pull(self, ref: ModelRef, expected: Digest | None = None) -> PullProgress:
        """Pull in a daemon thread; progress is readable at once. A running pull is reused."""
        model_id = ref_id(ref)
        current = self.progress.get(model_id)
        if current is not None and current.state is PullState.RUNNING:
            running = self._pull_digest.get(model_id, (current, None))[1]
            if expected is not None and str(expected) != str(running):
                # Joining it would register the bytes without the check this caller asked for.
                raise Conflict(
                    f"{model_id} is already being pulled "
                    f"{f'with digest {running}' if running else 'without a digest'}; wait for "
                    f"that pull to end, then pull it again with digest {expected} (a model in "
                    "the catalog with another digest is refused)"
                )
            return current
        progress = PullProgress(model_id)
        self.progress[model_id] = progress
        self._pull_digest[model_id] = (progress, expected)

        def run() -> None:
            # ensure_present records a pull it runs on a progress of its own; this one ends
            # here too, for when it found the model already present (or failed before).
            try:
                self.ensure_present(ref, expected)
            except OrchError as exc:
                if progress.state is PullState.RUNNING:
                    progress.finish(PullState.FAILED, exc.envelope())
            except Exception as exc:
                progress.finish(PullState.FAILED, {"code": "INTERNAL", "message": repr(exc)})
            else:
                if progress.state is PullState.RUNNING:
                    progress.finish(PullState.DONE)
            finally:
                if self._pull_digest.get(model_id, (None, None))[0] is progress:
                    del self._pull_digest[model_id]
                self.progress.settle()

        threading.Thread(target=run, name=f"pull {model_id}", daemon=True).start()
        return progress

    def start_verify(self, model_id: str) -> None:
        def run() -> None:
            try:
                self.verify(model_id)
            except OrchError:
                pass  # the entry vanished meanwhile

        threading.Thread(target=run, name=f"verify {model_id}", daemon=True).start()

    def delete(self, model_id: str) -> DeleteOutcome:
        outcome = self.store.delete(model_id)
        if outcome.found and self.metrics is not None:
            for each in Lifecycle:
                try:
                    self.metrics.model_state.remove(model_id, each.value)
                except KeyError:
                    pass  # never exported for this model
        self.progress.pop(model_id)
        return outcome

    # -- lifecycle and verification after the fact ---------------------------------------------

    def verify(self, model_id: str) -> ModelEntry:
        """Re-hash the bytes against the recorded digest and record pass or fail."""
        entry = self.store.get(model_id)
        if entry is None:
            raise NotFound(f"model {model_id!r} is not in the catalog; see llorch models ls")
        try:
            check = recheck(entry, force=True, stop=self.stopping)
        except OSError as exc:  # bytes that can no longer be read fail their verification
            check = Recheck(False, False, f"{entry.local_path} cannot be read: {exc}")
        if entry.digest is None and not entry.files:
            result = VerifyResult.WARN if check.rehashed else VerifyResult.FAIL
        else:
            result = VerifyResult.PASS if check.ok else VerifyResult.FAIL
        self._count(result, "reverify")
        narrate("catalog", "verify", model_id, f"Verifies {model_id}: {result.value}.")
        return self._record(model_id, result, check)

    def confirm(self, model_id: str) -> ModelEntry | None:
        """Before an engine is launched on ``model_id``: its files are still the ones the
        catalog hashed, else DigestMismatch (the engine opens the path itself, and would load
        whatever lies there now under the registered digest).

        Costs an open and an ``fstat`` per file while their identities are the recorded ones;
        a file whose identity changed is hashed again (once: the result is recorded with the
        new identity, so a refused model is not re-read on every restart). None when the
        model is not in the catalog."""
        with self._confirm_lock(model_id):
            return self._confirm(model_id)

    def _confirm(self, model_id: str) -> ModelEntry | None:
        entry = self.store.get(model_id)
        if entry is None or (entry.digest is None and not entry.files):
            return entry
        try:
            check = recheck(entry, stop=self.stopping)
        except OSError as exc:
            check = Recheck(False, False, f"{entry.local_path} cannot be read: {exc}")
        if check.rehashed or not check.ok:
            result = VerifyResult.PASS if check.ok else VerifyResult.FAIL
            self._count(result, "changed on disk")
            narrate(
                "catalog",
                "verify",
                model_id,
                f"Verifies {model_id} again before a launch, since its files changed on disk "
                f"after they were hashed: {result.value}"
                + (f" ({check.problem})." if check.problem else "."),
                level="info" if check.ok else "warning",
            )
            with contextlib.suppress(OrchError):  # unrecorded: the next launch hashes again
                entry = self._record(model_id, result, check)
        problem = check.problem
        if check.ok and not check.rehashed and entry.verification == VerifyResult.FAIL.value:
            problem = f"{entry.local_path} failed its last verification"
        if problem is None:
            return entry
        raise DigestMismatch(
            f"model {model_id} is not the file registered: {problem}; no engine is started on "
            "it (it would serve other bytes under the registered digest)",
            hint=f"put the registered file back, then `llorch models verify {model_id}`; to "
            f"use the new file instead, `llorch models rm {model_id}` (with the server stopped "
            "when its pools serve the model) and register it again (a pool's local model is "
            "registered anew when the server starts)",
        )

    def _confirm_lock(self, model_id: str) -> threading.Lock:
        """One confirmation of a model at a time: the replicas of a pool launching together
        after its file changed hash it once, the others find the identity recorded."""
        with self._flights_lock:
            return self._confirming.setdefault(model_id, threading.Lock())

    def _record(self, model_id: str, result: VerifyResult, check: Recheck) -> ModelEntry:
        """Store a verification's result with the identities of the files it looked at."""
        update: dict[str, object] = {"verification": result.value, "last_verified_ms": now_ms()}
        if check.identity is not None:
            update["identity"] = check.identity
        if check.files:
            update["files"] = check.files
        return self.store.update(model_id, lambda e: e.model_copy(update=update))

    def set_state(self, model_id: str, state: Lifecycle) -> ModelEntry:
        entry = self.store.set_state(model_id, state)
        self._set_state_metric(model_id, state)
        narrate("catalog", "state", model_id, f"Marks {model_id} {state.value}.")
        return entry

    def require_active(self, model_id: str) -> None:
        entry = self.store.get(model_id)
        if entry is not None and entry.lifecycle is Lifecycle.RETIRED:
            raise ModelDeprecated(
                f"model {model_id} is Retired",
                hint=f"use another model, or llorch models state {model_id} Active",
            )

    def _count(self, result: VerifyResult, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.catalog_verifications_total.labels(
                result=result.value, reason=reason, engine=""
            ).inc()

    def _set_state_metric(self, model_id: str, state: Lifecycle) -> None:
        if self.metrics is None:
            return
        for each in Lifecycle:
            self.metrics.model_state.labels(model_id=model_id, state=each.value).set(
                1 if each is state else 0
            )


def _scheme_of(ref: ModelRef) -> str:
    match ref:
        case HfRef():
            return "hf"
        case FileRef():
            return "file"
        case UrlRef():
            return ref.scheme
        case S3Ref():
            return "s3"
        case OciRef():
            return "oci"


def _gguf_of(path: Path) -> GgufInfo | None:
    candidates = [path] if path.is_file() else sorted(path.rglob("*.gguf"))
    for candidate in candidates:
        if is_gguf(candidate):
            try:
                return read_gguf(candidate)
            except InvalidParams:
                return None
    return None


def _refuse_empty(path: Path, model_id: str, stage: Path) -> None:
    """A source that served no file (an artifact without layers, an empty repo) has no model;
    registering its empty folder would make a pool fail later and obscurely."""
    if not path.is_dir() or any(p.is_file() for p in path.rglob("*")):
        return
    shutil.rmtree(stage, ignore_errors=True)
    raise InvalidModelRef(
        f"{model_id} holds no file, so there is no model to register",
        hint="check the source: the artifact or repository is empty",
    )


def _signature(path: Path) -> tuple[tuple[str, int, int], ...]:
    """Each file's (path, size, mtime) under ``path``: it differs once anything was written."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    signature = []
    for each in files:
        try:
            stat = each.stat()
        except FileNotFoundError:  # removed meanwhile: a change like any other
            signature.append((str(each), -1, -1))
            continue
        signature.append((str(each), stat.st_size, stat.st_mtime_ns))
    return tuple(signature)


def _mib(count: int) -> int:
    return count // (1024 * 1024)
