"""``hf:org/repo[@rev][/file]`` through ``huggingface_hub`` against ``endpoint`` (HF_ENDPOINT).

One file: ``hf_hub_download``; a whole repo: ``snapshot_download`` (files in parallel). The repo
info gives the commit and each LFS file's sha256, which the provisioner checks. The token is
handed to the library only; it is never logged, stored or put in an error message.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llama_orch.catalog.refs import HfRef, ModelRef, disjoint_paths, safe_relative
from llama_orch.errors import FetchFailed, InvalidModelRef, NotFound
from llama_orch.provisioners.fetch.base import Fetched
from llama_orch.provisioners.policy import OutboundPolicy
from llama_orch.provisioners.progress import PullProgress

DEFAULT_ENDPOINT = "https://huggingface.co"


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

        try:
            return self._fetch(ref, stage, progress)
        except (errors.RepositoryNotFoundError, errors.RevisionNotFoundError) as exc:
            raise NotFound(f"{ref.repo_id}@{ref.revision or 'main'} is not on the hub") from exc
        except errors.EntryNotFoundError as exc:
            raise NotFound(f"{ref.path} is not in {ref.repo_id}") from exc
        except errors.HfHubHTTPError as exc:
            raise FetchFailed(f"the hub refused {ref.repo_id}: HTTP {_status(exc)}") from exc
        except httpx2.HTTPError as exc:  # the library's transport: no answer at all
            raise FetchFailed(
                f"cannot reach the hub at {self.endpoint_url}: {type(exc).__name__}: {exc}",
                hint="check HF_ENDPOINT (catalog.hf_endpoint) and the network, then pull "
                "again; files already fetched are kept",
            ) from exc

    def _fetch(self, ref: HfRef, stage: Path, progress: PullProgress) -> Fetched:
        from huggingface_hub import HfApi, hf_hub_download, snapshot_download

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
        progress.set_total(sum(int(s.size or 0) for s in siblings.values()))
        snapshot_download(
            ref.repo_id,
            revision=commit,
            local_dir=files,
            endpoint=self.endpoint_url,
            token=self._token,
            max_workers=self.workers,
        )
        progress.add(sum(int(s.size or 0) for s in siblings.values()))
        _drop_metadata(files)
        claimed = {name: s.lfs.sha256 for name, s in siblings.items() if s.lfs}
        return Fetched(path=files, claimed_sha256=claimed, source=source)


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


def _status(exc: Any) -> object:
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", "?")
