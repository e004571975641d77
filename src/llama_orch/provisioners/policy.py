"""The outbound policy (network_policy) and the trust policy (catalog.trust_policy)."""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

from llama_orch.catalog.verify import VerifyResult
from llama_orch.errors import OutboundDenied, UntrustedArtifact


@dataclass(frozen=True, slots=True)
class OutboundPolicy:
    """Which sources a fetch may reach; ``file`` needs no network and is always allowed."""

    allow_outbound: bool = False
    allowed_hosts: tuple[str, ...] = ()
    allowed_schemes: tuple[str, ...] = ("file",)

    def check(self, scheme: str, host: str) -> None:
        if scheme == "file":
            return
        if not self.allow_outbound:
            raise OutboundDenied(
                f"fetching from {host} ({scheme}) needs outbound network access, which "
                "network_policy.allow_outbound forbids",
                hint="set network_policy.allow_outbound: true (and list the host in "
                "network_policy.allowed_hosts), or copy the file here and use file:/path",
            )
        if scheme not in self.allowed_schemes:
            raise OutboundDenied(
                f"scheme {scheme!r} is not in network_policy.allowed_schemes "
                f"{list(self.allowed_schemes)}",
                hint=f"add {scheme} to network_policy.allowed_schemes",
            )
        if self.allowed_hosts and not any(
            fnmatch.fnmatch(host, pattern) for pattern in self.allowed_hosts
        ):
            raise OutboundDenied(
                f"host {host!r} is not in network_policy.allowed_hosts {list(self.allowed_hosts)}",
                hint=f"add {host} to network_policy.allowed_hosts",
            )


@dataclass(frozen=True, slots=True)
class TrustDecision:
    result: VerifyResult
    reason: str


@dataclass(frozen=True, slots=True)
class TrustPolicy:
    """``strict`` refuses what is not verified; ``permissive`` lets it through with a warning.

    No signature or SBOM verifier is configured in this build, so requiring either under
    ``strict`` refuses every artifact, and under ``permissive`` adds a warning.
    """

    mode: str = "permissive"
    allowed_registries: tuple[str, ...] = ()
    require_signature: bool = False
    require_sbom: bool = False

    def check_source(self, host: str, model_id: str) -> None:
        if (
            host
            and self.allowed_registries
            and not any(fnmatch.fnmatch(host, pattern) for pattern in self.allowed_registries)
        ):
            raise UntrustedArtifact(
                f"{model_id} comes from {host}, which is not in "
                f"catalog.trust_policy.allowed_registries {list(self.allowed_registries)}",
                hint=f"add {host} to catalog.trust_policy.allowed_registries",
            )

    def decide(self, digest_result: VerifyResult, model_id: str) -> TrustDecision:
        """The verification outcome, or UntrustedArtifact under ``strict``."""
        missing = [
            name
            for name, required in (
                ("signature", self.require_signature),
                ("SBOM", self.require_sbom),
            )
            if required
        ]
        if digest_result is VerifyResult.PASS and not missing:
            return TrustDecision(VerifyResult.PASS, "digest")
        reason = (
            f"no verifier for the required {' and '.join(missing)}"
            if missing
            else "no digest to verify against"
        )
        if self.mode == "strict":
            raise UntrustedArtifact(
                f"{model_id} is not verified ({reason}); catalog.trust_policy.mode is strict",
                hint="pull with --digest sha256:<hex> (or a source that publishes sha256), "
                "or set catalog.trust_policy.mode: permissive",
            )
        return TrustDecision(VerifyResult.WARN, reason)
