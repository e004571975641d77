"""The per-request auth decision of SPEC §13 (D-AUTH-01), as a pure function of the request.

1. The caller is loopback only if its socket address is; ``X-Forwarded-For`` replaces the socket
   address only with ``TRUST_PROXY_AUTH=true`` (its last entry: the address the proxy saw).
2. A header is present and a token is configured: ``Bearer <token>`` must match (timing-safe);
   a match is ``token:<fp6>``, anything else ``BAD_TOKEN``.
3. Otherwise a loopback caller is ``localhost`` when ``AUTH_OPTIONAL=true`` or no token is
   configured (never on worker paths, AUTH-1003); a non-loopback caller of a server without a
   token gets ``NON_LOOPBACK_WITHOUT_TOKEN``; everyone else ``MISSING_TOKEN``.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from llama_orch.auth.tokens import bearer_of, token_identity, token_matches
from llama_orch.errors import BadToken, MissingToken, NonLoopbackWithoutToken

LOCALHOST = "localhost"

#: Paths reserved for worker components; they always need the token (AUTH-1003). No endpoint
#: exists yet because the pool manager runs in-process (§17.3), but the rule is enforced here.
WORKER_PATH_PREFIXES = ("/v1/workers",)

_TOKEN_HINT = "send `Authorization: Bearer <token>`; llorch reads LLORCH_TOKEN or --token-file"


def is_loopback_address(host: str | None) -> bool:
    """True for a literal loopback IP (127.0.0.0/8, ::1, or IPv4-mapped 127.x); names are not."""
    if not host:
        return False
    try:
        address = ipaddress.ip_address(host.strip().strip("[]"))
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped.is_loopback
    return address.is_loopback


def is_console_asset(method: str, path: str) -> bool:
    """The console's static page and scripts: code only, no data, so a browser can load them
    and then ask for the token; everything they fetch goes through the usual check."""
    return method in ("GET", "HEAD") and (path == "/" or path.startswith("/ui/"))


def is_worker_path(path: str) -> bool:
    return any(path == p or path.startswith(p + "/") for p in WORKER_PATH_PREFIXES)


@dataclass(frozen=True, slots=True)
class AuthPolicy:
    """What the server was configured with; ``authenticate`` applies it to one request."""

    token: str | None = field(default=None, repr=False)
    optional: bool = False
    trust_proxy: bool = False

    def client_address(self, peer: str | None, forwarded_for: str | None) -> str | None:
        """The address the loopback rule looks at; forwarded headers only behind a trusted proxy."""
        if self.trust_proxy and forwarded_for:
            hops = [hop.strip() for hop in forwarded_for.split(",") if hop.strip()]
            if hops:
                return hops[-1]
        return peer

    def authenticate(
        self,
        *,
        peer: str | None,
        authorization: str | None,
        forwarded_for: str | None = None,
        path: str = "/",
    ) -> str:
        """The caller's identity (``localhost`` or ``token:<fp6>``); raises an ``AuthError``."""
        loopback = is_loopback_address(self.client_address(peer, forwarded_for))
        if authorization is not None and self.token is not None:
            presented = bearer_of(authorization)
            if presented is not None and token_matches(presented, self.token):
                return token_identity(self.token)
            raise BadToken(
                "the bearer token does not match the one this server is configured with",
                hint="check AUTH_TOKEN on the server and LLORCH_TOKEN (or --token-file) on "
                "the client; the header must read `Bearer <token>`",
            )
        worker = is_worker_path(path)
        if loopback and not worker and (self.optional or self.token is None):
            return LOCALHOST
        if not loopback and self.token is None:
            raise NonLoopbackWithoutToken(
                "this server has no token configured, so it serves loopback callers only",
                hint="set AUTH_TOKEN on the server (mint one with `llorch token new`) and send "
                "it as a bearer token, or call from the server's own machine",
            )
        if worker and self.token is None:
            raise MissingToken(
                "worker calls always need the bearer token, and this server has none configured",
                hint="set AUTH_TOKEN on the server and give the same token to the worker",
            )
        raise MissingToken("this server requires a bearer token", hint=_TOKEN_HINT)
