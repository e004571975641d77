"""``file:`` refs: local bytes, registered where they are; never touches the network."""

from __future__ import annotations

from pathlib import Path

from llama_orch.catalog.refs import FileRef, ModelRef
from llama_orch.errors import NotFound
from llama_orch.provisioners.fetch.base import Fetched
from llama_orch.provisioners.progress import PullProgress


class FileFetcher:
    def endpoint(self, ref: ModelRef) -> tuple[str, str]:
        return "file", ""

    def fetch(self, ref: ModelRef, stage: Path, progress: PullProgress) -> Fetched:
        assert isinstance(ref, FileRef)
        path = Path(ref.path)
        if not path.exists():
            raise NotFound(f"{ref.path} does not exist", hint="check the path in pools[].model")
        return Fetched(path=path, source={"path": ref.path})
