"""AppDeps: the typed bundle of collaborators the HTTP layer calls (no service locator)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from llama_orch.adapters.host import AdapterHost
from llama_orch.artifacts import ArtifactStore
from llama_orch.config import Config, Settings
from llama_orch.dispatch.admission import Admission
from llama_orch.dispatch.dispatcher import Dispatcher
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.manager import PoolManager
from llama_orch.provisioners.models import ModelProvisioner


@dataclass(frozen=True, slots=True)
class AppDeps:
    settings: Settings
    pools: PoolManager
    dispatcher: Dispatcher
    admission: Admission
    metrics: Metrics
    #: The adapter host; the control plane reads its capability cache (ORCH-3603).
    host: AdapterHost
    artifacts: ArtifactStore
    #: The model catalog and provisioner behind /v1/catalog/models (None: no catalog routes).
    models: ModelProvisioner | None = None

    @property
    def config(self) -> Config:
        return self.settings.config


def deps_of(request: Request) -> AppDeps:
    deps: AppDeps = request.app.state.deps
    return deps
