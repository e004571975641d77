"""The D-AUTH-01 decision order as a table: peer, header and configuration in, identity out."""

from __future__ import annotations

import pytest

from llama_orch.auth.policy import LOCALHOST, AuthPolicy, is_loopback_address
from llama_orch.auth.tokens import token_identity
from llama_orch.errors import AuthError, BadToken, MissingToken, NonLoopbackWithoutToken

TOKEN = "correct-horse-battery-staple"
LAN = "192.168.1.20"


def decide(policy: AuthPolicy, peer: str | None, header: str | None, **kw: str) -> object:
    """The identity, or the class of the AuthError raised."""
    try:
        return policy.authenticate(peer=peer, authorization=header, **kw)
    except AuthError as exc:
        return type(exc)


class TestLoopbackAddress:
    @pytest.mark.parametrize(
        ("host", "expected"),
        [
            ("127.0.0.1", True),
            ("127.8.9.10", True),
            ("::1", True),
            ("[::1]", True),
            ("::ffff:127.0.0.1", True),
            ("::ffff:10.0.0.1", False),
            ("10.0.0.1", False),
            ("0.0.0.0", False),
            ("localhost", False),
            ("testclient", False),
            ("", False),
            (None, False),
        ],
    )
    def test_only_literal_loopback_ips(self, host: str | None, expected: bool) -> None:
        """Only a literal loopback socket address counts; names never do."""
        assert expected == is_loopback_address(host)


class TestDecisionOrder:
    @pytest.mark.parametrize(
        ("policy", "peer", "header", "expected"),
        [
            # No token configured: the open-loopback home default (ORCH-3035).
            (AuthPolicy(), "127.0.0.1", None, LOCALHOST),
            (AuthPolicy(), "127.0.0.1", "Bearer anything", LOCALHOST),
            (AuthPolicy(), LAN, None, NonLoopbackWithoutToken),
            (AuthPolicy(), LAN, "Bearer anything", NonLoopbackWithoutToken),
            # Token configured, AUTH_OPTIONAL=false: everyone presents it.
            (AuthPolicy(TOKEN), "127.0.0.1", None, MissingToken),
            (AuthPolicy(TOKEN), "127.0.0.1", f"Bearer {TOKEN}", token_identity(TOKEN)),
            (AuthPolicy(TOKEN), "127.0.0.1", "Bearer wrong", BadToken),
            (AuthPolicy(TOKEN), LAN, None, MissingToken),
            (AuthPolicy(TOKEN), LAN, f"Bearer {TOKEN}", token_identity(TOKEN)),
            (AuthPolicy(TOKEN), LAN, f"Basic {TOKEN}", BadToken),
            (AuthPolicy(TOKEN), LAN, "", BadToken),
            # AUTH_OPTIONAL=true exempts loopback callers only (OC-CONFIG-6033).
            (AuthPolicy(TOKEN, optional=True), "127.0.0.1", None, LOCALHOST),
            (AuthPolicy(TOKEN, optional=True), "::1", None, LOCALHOST),
            (AuthPolicy(TOKEN, optional=True), LAN, None, MissingToken),
            (AuthPolicy(TOKEN, optional=True), "127.0.0.1", "Bearer wrong", BadToken),
        ],
    )
    def test_table(
        self, policy: AuthPolicy, peer: str, header: str | None, expected: object
    ) -> None:
        """Each row of SPEC §13's decision order gives its identity or its error."""
        assert expected == decide(policy, peer, header)

    def test_no_client_address_is_not_loopback(self) -> None:
        """A request without a socket address (a Unix socket) gets no loopback exemption."""
        assert MissingToken == decide(AuthPolicy(TOKEN, optional=True), None, None)


class TestWorkerPaths:
    @pytest.mark.parametrize(
        "policy", [AuthPolicy(), AuthPolicy(TOKEN), AuthPolicy(TOKEN, optional=True)]
    )
    def test_worker_registration_needs_the_token_even_on_loopback(self, policy: AuthPolicy) -> None:
        """Worker paths never get the loopback exemption (AUTH-1003)."""
        assert MissingToken == decide(policy, "127.0.0.1", None, path="/v1/workers/register")

    def test_worker_with_the_token_is_allowed(self) -> None:
        """A worker presenting the token is identified by its fingerprint."""
        assert token_identity(TOKEN) == decide(
            AuthPolicy(TOKEN), "127.0.0.1", f"Bearer {TOKEN}", path="/v1/workers/register"
        )

    def test_prefix_must_be_a_whole_segment(self) -> None:
        """/v1/workersfoo is not a worker path."""
        assert LOCALHOST == decide(AuthPolicy(), "127.0.0.1", None, path="/v1/workersfoo")


class TestForwardedFor:
    def test_ignored_without_trust(self) -> None:
        """A spoofed X-Forwarded-For from a LAN peer earns no loopback treatment."""
        policy = AuthPolicy(TOKEN, optional=True)
        assert MissingToken == decide(policy, LAN, None, forwarded_for="127.0.0.1")

    def test_ignored_without_trust_even_with_no_token(self) -> None:
        """Without trust, a spoofed header cannot turn 403 into loopback access."""
        assert NonLoopbackWithoutToken == decide(AuthPolicy(), LAN, None, forwarded_for="127.0.0.1")

    def test_trusted_proxy_forwards_the_real_client(self) -> None:
        """Behind a trusted same-host proxy, the forwarded LAN client is not loopback."""
        policy = AuthPolicy(TOKEN, optional=True, trust_proxy=True)
        assert MissingToken == decide(policy, "127.0.0.1", None, forwarded_for=LAN)

    def test_trusted_proxy_uses_the_last_hop(self) -> None:
        """The last entry (what the proxy saw) counts; a client-supplied first entry does not."""
        policy = AuthPolicy(TOKEN, optional=True, trust_proxy=True)
        assert (MissingToken, LOCALHOST) == (
            decide(policy, "127.0.0.1", None, forwarded_for=f"127.0.0.1, {LAN}"),
            decide(policy, "127.0.0.1", None, forwarded_for=f"{LAN}, 127.0.0.1"),
        )

    def test_trusted_proxy_without_header_falls_back_to_the_socket(self) -> None:
        """No forwarded header means the socket address decides."""
        policy = AuthPolicy(TOKEN, optional=True, trust_proxy=True)
        assert LOCALHOST == decide(policy, "127.0.0.1", None)

    def test_injected_token_is_checked(self) -> None:
        """A proxy-injected Authorization header is checked like any other (AUTH-1006)."""
        policy = AuthPolicy(TOKEN, trust_proxy=True)
        assert (token_identity(TOKEN), BadToken) == (
            decide(policy, "127.0.0.1", f"Bearer {TOKEN}", forwarded_for=LAN),
            decide(policy, "127.0.0.1", "Bearer forged", forwarded_for=LAN),
        )


class TestErrors:
    @pytest.mark.parametrize(
        ("policy", "peer", "header", "code", "code_id"),
        [
            (AuthPolicy(TOKEN), "127.0.0.1", None, "MISSING_TOKEN", 40101),
            (AuthPolicy(TOKEN), "127.0.0.1", "Bearer x", "BAD_TOKEN", 40102),
            (AuthPolicy(), LAN, None, "NON_LOOPBACK_WITHOUT_TOKEN", 40301),
        ],
    )
    def test_envelope_has_code_id_and_hint(
        self, policy: AuthPolicy, peer: str, header: str | None, code: str, code_id: int
    ) -> None:
        """Each refusal carries its name, number, message and a hint (D-AUTH-02)."""
        with pytest.raises(AuthError) as info:
            policy.authenticate(peer=peer, authorization=header)
        body = info.value.envelope()
        assert (code, code_id) == (body["code"], body["code_id"])
        assert body["message"] and body["hint"]
        assert TOKEN not in str(body)
