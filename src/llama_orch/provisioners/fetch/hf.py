"""``hf:org/repo[@rev][/file]`` through ``huggingface_hub`` against ``endpoint`` (HF_ENDPOINT).

One file: ``hf_hub_download``; a whole repo: the same per listed file, in parallel. The repo
info gives the commit and each LFS file's sha256, which the provisioner checks. The token is
handed to the library only; it is never logged, stored or put in an error message.

The library follows redirects itself (a hub's 302 to its CDN), so every request its client
sends passes the pull's outbound policy first, as each hop of an https download does.
"""

from __future__ import annotations

import contextvars
import shutil
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from llama_orch.catalog.refs import HfRef, ModelRef, disjoint_paths, safe_relative
from llama_orch.errors import FetchFailed, InvalidModelRef, NotFound
from llama_orch.provisioners.fetch.base import Fetched
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

if TYPE_CHECKING:
    import httpx2

DEFAULT_ENDPOINT = "https://huggingface.co"

#: The outbound policy of the pull this thread works for; None outside hf: pulls.
_OUTBOUND: contextvars.ContextVar[OutboundPolicy | None] = contextvars.ContextVar(
    "hf_outbound", default=None
)
#: Statuses that say the hub failed rather than refused (besides every 5xx): worth a retry.
_HUB_FAILURES = (408, 429)
_install_lock = threading.Lock()
_installed = False


class HfFetcher:
    def __init__(
        self, *, endpoint: str = DEFAULT_ENDPOINT, token: str | None = None, workers: int = 8
    ) -> None:
        self.endpoint_url = endpoint.rstrip("/")
        self._token = token
        self.workers = workers

    def __repr__(self) -> str:  # keeps the token out of any repr that reaches a log
        return f"HfFetcher(endpoint={self.endpoint_url!r})"

    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        parts = urlsplit(self.endpoint_url)
        return parts.scheme, parts.hostname or ""

    def fetch(
        self, ref: ModelRef, stage: Path, progress: PullProgress, outbound: OutboundPolicy
    ) -> Fetched:
        assert isinstance(ref, HfRef)
        import httpx2
        from huggingface_hub import errors

        _police_hub_client()
        bound = _OUTBOUND.set(outbound)
        try:
            return self._fetch(ref, stage, progress)
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
            raise NotFound(f"{ref.repo_id}@{ref.revision or 'main'} is not on the hub") from exc
        except errors.LocalEntryNotFoundError as exc:
            # What the library raises when the hub fails to answer for a file (an error
            # status, a dropped connection) and no copy is cached: the hub failed, the file
            # may well be there.
            raise self._hub_failed(ref, exc.__cause__ or exc) from exc
        except errors.EntryNotFoundError as exc:
            raise NotFound(f"{ref.path or 'a file it lists'} is not in {ref.repo_id}") from exc
        except errors.HfHubHTTPError as exc:
            status = _status(exc)
            if status is not None and (status >= 500 or status in _HUB_FAILURES):
                raise self._hub_failed(ref, exc) from exc
            raise FetchFailed(f"the hub refused {ref.repo_id}: HTTP {status or '?'}") from exc
        except httpx2.HTTPError as exc:  # the library's transport: no answer at all
            raise FetchFailed(
                f"cannot reach the hub at {self.endpoint_url}: {type(exc).__name__}: {exc}",
                hint="check HF_ENDPOINT (catalog.hf_endpoint) and the network, then pull "
                "again; files already fetched are kept",
            ) from exc
        finally:
            _OUTBOUND.reset(bound)

    def _hub_failed(self, ref: HfRef, cause: BaseException) -> FetchFailed:
        status = _status(cause)
        what = f"HTTP {status}" if status else f"{type(cause).__name__}: {cause}"
        return FetchFailed(
            f"the hub at {self.endpoint_url} failed during the pull of hf:{ref.repo_id} "
            f"({what}); pull again: the files already fetched are kept",
            hint="pull again once the hub answers; if it keeps failing, check HF_ENDPOINT "
            "(catalog.hf_endpoint)",
        )

    def _fetch(self, ref: HfRef, stage: Path, progress: PullProgress) -> Fetched:
        from huggingface_hub import HfApi, hf_hub_download

        api = HfApi(endpoint=self.endpoint_url, token=self._token)
        info = api.model_info(ref.repo_id, revision=ref.revision, files_metadata=True)
        commit = str(info.sha)
        siblings = {s.rfilename: s for s in info.siblings or []}
        for name in siblings:
            safe_relative(name, f"hf:{ref.repo_id}/{name}")
        disjoint_paths(list(siblings), f"hf:{ref.repo_id}@{commit[:12]}")
        if ref.path is None and all(_is_git_file(name) for name in siblings):
            raise InvalidModelRef(
                f"hf:{ref.repo_id}@{commit[:12]} holds no model file "
                f"({', '.join(sorted(siblings)) or 'no file at all'})",
                hint="check the repo and revision: the model's files are not in it",
            )
        files = stage / "files"
        source = {"repo": ref.repo_id, "revision": ref.revision or "main", "commit": commit}
        if ref.path is not None:
            sibling = siblings.get(ref.path)
            if sibling is None:
                raise NotFound(f"{ref.path} is not in {ref.repo_id}@{commit[:12]}")
            size = int(sibling.size or 0)
            progress.set_total(size)
            hf_hub_download(
                ref.repo_id,
                ref.path,
                revision=commit,
                local_dir=files,
                endpoint=self.endpoint_url,
                token=self._token,
                tqdm_class=_byte_counter(progress),
            )
            progress.set_total(size, size)
            _drop_metadata(files)
            claimed = {"": sibling.lfs.sha256} if sibling.lfs else {}
            return Fetched(path=files / ref.path, claimed_sha256=claimed, source=source)
        total = sum(int(s.size or 0) for s in siblings.values())
        progress.set_total(total)

        def one(name: str) -> None:
            hf_hub_download(
                ref.repo_id,
                name,
                revision=commit,
                local_dir=files,
                endpoint=self.endpoint_url,
                token=self._token,
                tqdm_class=_byte_counter(progress),
            )

        # Not snapshot_download: its worker threads would not carry the pull's outbound policy.
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            futures = [pool.submit(contextvars.copy_context().run, one, n) for n in siblings]
            try:
                for future in futures:
                    future.result()
            finally:
                for future in futures:  # the first failure ends the pull: start no more files
                    future.cancel()
        _drop_metadata(files)
        claimed = {name: s.lfs.sha256 for name, s in siblings.items() if s.lfs}
        return Fetched(path=files, claimed_sha256=claimed, source=source)


def _police_hub_client() -> None:
    """Make the library's shared client check every request it sends (the first, and each
    redirect it follows) against the outbound policy of the pull it is sent for."""
    global _installed
    with _install_lock:
        if _installed:
            return
        from huggingface_hub import constants, set_client_factory
        from huggingface_hub.utils import _http

        def factory() -> httpx2.Client:
            # The library's own client (its request id, offline switch), plus the check.
            client = _http.default_client_factory()
            hooks = client.event_hooks
            client.event_hooks = {**hooks, "request": [*hooks["request"], _check_hop]}
            return client

        set_client_factory(factory)
        # Xet storage downloads through hf_xet's own client, which no hook sees; without it
        # the hub serves the same files over plain HTTP through the client above.
        constants.HF_HUB_DISABLE_XET = True
        _installed = True


def _check_hop(request: httpx2.Request) -> None:
    outbound = _OUTBOUND.get()
    if outbound is not None:
        outbound.check(request.url.scheme, request.url.host)


def _is_git_file(name: str) -> bool:
    """.gitattributes, .gitignore: what every hub repo holds, model or not."""
    return name.rsplit("/", 1)[-1].startswith(".git")


def _byte_counter(progress: PullProgress) -> Any:
    """A silent tqdm class that feeds the library's byte counts into ``progress``."""
    from tqdm.auto import tqdm

    class ByteCounter(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if n:
                progress.add(int(n))
            result: bool | None = super().update(n)
            return result

    return ByteCounter


def _drop_metadata(files: Path) -> None:
    """``local_dir`` mode keeps the library's bookkeeping in ``.cache/``; it is not the model."""
    shutil.rmtree(files / ".cache", ignore_errors=True)


def _status(exc: BaseException) -> int | None:
    status = getattr(getattr(exc, "response", None), "status_code", None)
    return status if isinstance(status, int) else None
