"""AppDeps: the typed bundle of collaborators the HTTP layer calls (no service locator)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from llama_orch.adapters.host import AdapterHost
from llama_orch.artifacts import ArtifactStore
from llama_orch.config import Config, Settings
from llama_orch.dispatch.service import TaskService
from llama_orch.observability.metrics import Metrics
from llama_orch.pool.manager import PoolManager
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.supervisor import Supervisor


@dataclass(frozen=True, slots=True)
class AppDeps:
    settings: Settings
    pools: PoolManager
    #: Everything about tasks and sessions goes through here.
    service: TaskService
    metrics: Metrics
    #: The adapter host; the control plane reads its capability cache.
    host: AdapterHost
    artifacts: ArtifactStore
    #: Owns every background loop and job; stopped last.
    supervisor: Supervisor
    #: The model catalog and provisioner behind /v1/catalog/models (None: no catalog routes).
    models: ModelProvisioner | None = None

    @property
    def config(self) -> Config:
        return self.settings.config


def deps_of(request: Request) -> AppDeps:
    deps: AppDeps = request.app.state.deps
    return deps
