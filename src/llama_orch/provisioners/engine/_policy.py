"""The outbound network policy check every engine download goes through."""

from __future__ import annotations

from urllib.parse import urlsplit

from llama_orch.config._models import NetworkPolicyConfig
from llama_orch.provisioners.engine._types import ProvisionError


def check_outbound(policy: NetworkPolicyConfig, url: str, *, step: str = "download") -> None:
    """Raise with the config change that would allow ``url``, unless the policy allows it."""
    parts = urlsplit(url)
    scheme, host = parts.scheme.lower(), (parts.hostname or "").lower()
    if scheme == "file":
        if "file" not in policy.allowed_schemes:
            raise ProvisionError(step, "network_policy.allowed_schemes does not allow file URLs")
        return
    if not policy.allow_outbound:
        raise ProvisionError(
            step,
            f"{url.split('?')[0]} needs an outbound download, which network_policy forbids; "
            f"set network_policy.allow_outbound: true, add {host!r} to allowed_hosts and "
            f"{scheme!r} to allowed_schemes, or install the engine yourself and use "
            "provisioning.mode: external",
        )
    if scheme not in policy.allowed_schemes:
        raise ProvisionError(
            step, f"scheme {scheme!r} is not in network_policy.allowed_schemes; add it to allow"
        )
    if policy.allowed_hosts and host not in {h.lower() for h in policy.allowed_hosts}:
        raise ProvisionError(
            step, f"host {host!r} is not in network_policy.allowed_hosts; add it to allow"
        )
