"""Build the model provisioner from the config file and the process environment."""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from pathlib import Path

from llama_orch.catalog.store import CatalogStore, default_catalog_root
from llama_orch.config import Config
from llama_orch.config._models import CatalogConfig
from llama_orch.observability.metrics import Metrics
from llama_orch.provisioners.fetch.base import Fetcher
from llama_orch.provisioners.fetch.file import FileFetcher
from llama_orch.provisioners.fetch.hf import DEFAULT_ENDPOINT, HfFetcher
from llama_orch.provisioners.fetch.https import HttpsFetcher
from llama_orch.provisioners.fetch.oci import OciFetcher
from llama_orch.provisioners.fetch.s3 import S3Fetcher
from llama_orch.provisioners.models import ModelProvisioner
from llama_orch.provisioners.policy import OutboundPolicy, TrustPolicy

_DEFAULT_ROOT = CatalogConfig().root


def catalog_root(config: Config, environ: Mapping[str, str]) -> Path:
    """``catalog.root``; left at its default it follows XDG_CACHE_HOME."""
    if config.catalog.root == _DEFAULT_ROOT:
        return default_catalog_root(environ)
    return Path(config.catalog.root).expanduser()


def tls_context(ca_roots: list[str]) -> ssl.SSLContext:
    """The system trust store plus ``catalog.trust_policy.ca_roots``."""
    context = ssl.create_default_context()
    for path in ca_roots:
        context.load_verify_locations(cafile=str(Path(path).expanduser()))
    return context


def model_provisioner(
    config: Config, environ: Mapping[str, str], metrics: Metrics | None = None
) -> ModelProvisioner:
    catalog = config.catalog
    trust = catalog.trust_policy
    verify = tls_context(trust.ca_roots)
    s3_endpoint = (
        environ.get("AWS_ENDPOINT_URL_S3")
        or environ.get("AWS_ENDPOINT_URL")
        or catalog.s3_endpoint_url
    )
    https = HttpsFetcher(verify=verify)
    fetchers: dict[str, Fetcher] = {
        "file": FileFetcher(),
        "http": https,
        "https": https,
        "hf": HfFetcher(
            endpoint=environ.get("HF_ENDPOINT") or catalog.hf_endpoint or DEFAULT_ENDPOINT,
            token=environ.get("HF_TOKEN") or None,
        ),
        "s3": S3Fetcher(endpoint_url=s3_endpoint or None),
        "oci": OciFetcher(insecure_registries=tuple(catalog.insecure_registries)),
    }
    policy = config.network_policy
    return ModelProvisioner(
        CatalogStore(catalog_root(config, environ)),
        fetchers,
        outbound=OutboundPolicy(
            policy.allow_outbound, tuple(policy.allowed_hosts), tuple(policy.allowed_schemes)
        ),
        trust=TrustPolicy(
            mode=trust.mode,
            allowed_registries=tuple(trust.allowed_registries),
            require_signature=trust.require_signature,
            require_sbom=trust.require_sbom,
        ),
        metrics=metrics,
    )
