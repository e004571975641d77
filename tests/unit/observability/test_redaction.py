"""Redaction: secret-shaped strings and configured secrets become [REDACTED]; prose survives."""

from __future__ import annotations

import pytest

from llama_orch.auth.policy import AuthPolicy
from llama_orch.errors import AuthError
from llama_orch.observability.redaction import REDACTED, Redactor, secret_values


class TestPatterns:
    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("Authorization: Bearer abcdef123456", f"Authorization: {REDACTED}"),
            ('{"authorization": "Bearer abcdef123456"}', f'{{"authorization": "{REDACTED}"}}'),
            ("x-api-key=0123456789abcdef", f"x-api-key={REDACTED}"),
            ("api_key: 'supersecretvalue'", f"api_key: '{REDACTED}'"),
            ("sent bearer eyJhbGciOi.payload.sig", f"sent bearer {REDACTED}"),
            ("GET /v1/x?api_key=abc&n=1", f"GET /v1/x?api_key={REDACTED}&n=1"),
            ("https://user:pa55@host/p", f"https://{REDACTED}@host/p"),
            ("key sk-proj-0123456789abcdef", f"key {REDACTED}"),
            ("hf_abcdefghijklmnop token", f"{REDACTED} token"),
            (
                "/m.gguf?X-Amz-Security-Token=FwoGZ&X-Amz-Expires=60&X-Amz-Signature=9f86d08",
                f"/m.gguf?X-Amz-Security-Token={REDACTED}&X-Amz-Expires=60"
                f"&X-Amz-Signature={REDACTED}",
            ),
            ("/o?x-goog-signature=5b1e0c7d", f"/o?x-goog-signature={REDACTED}"),
        ],
    )
    def test_secret_shapes_are_redacted(self, raw: str, expected: str) -> None:
        """Bearer tokens, API keys, Authorization headers and URL credentials are replaced."""
        assert expected == Redactor().text(raw)

    @pytest.mark.parametrize(
        ("raw", "expected"),
        [
            ("AUTHORIZATION=BASIC QWxhZGRpbjpvcGVu", f"AUTHORIZATION={REDACTED}"),
            ("X-Api-Key: 0123456789abcdef", f"X-Api-Key: {REDACTED}"),
            ("BEARER abcdef123456", f"BEARER {REDACTED}"),
            ("HTTPS://u:p@h/", f"HTTPS://{REDACTED}@h/"),
            # The regex engine folds the dotless i onto i: non-ASCII text always gets the scan.
            ("author\u0131zation: abcdef123456", f"author\u0131zation: {REDACTED}"),
        ],
    )
    def test_the_quick_precheck_skips_no_secret(self, raw: str, expected: str) -> None:
        """Text skips the pattern passes only when none can match: case and non-ASCII
        spellings still reach them."""
        assert expected == Redactor().text(raw)

    @pytest.mark.parametrize(
        "prose",
        [
            "the bearer token does not match",
            "send `Authorization: Bearer <token>`",
            "check api_key_env",
            "https://example.com/path?n=1",
            "Admits task 1234abcd to p0 at position 0.",
        ],
    )
    def test_prose_survives(self, prose: str) -> None:
        """Sentences that merely mention tokens and headers are left as they are."""
        assert prose == Redactor().text(prose)

    def test_auth_errors_survive_redaction(self) -> None:
        """No auth error message or hint is mangled by the redaction of error bodies."""
        cases = [
            (AuthPolicy("t0ken-value"), "127.0.0.1", None),
            (AuthPolicy("t0ken-value"), "127.0.0.1", "Bearer nope"),
            (AuthPolicy(), "10.0.0.1", None),
        ]
        for policy, peer, header in cases:
            with pytest.raises(AuthError) as info:
                policy.authenticate(peer=peer, authorization=header)
            body = info.value.envelope()
            assert body == Redactor(("t0ken-value",)).value(body)


class TestKnownSecrets:
    def test_configured_secret_of_any_shape(self) -> None:
        """A configured secret is redacted wherever it appears, however short or plain."""
        redactor = Redactor(("plainword",)).with_secret("x9")
        assert f"a {REDACTED} b {REDACTED}" == redactor.text("a plainword b x9")

    def test_empty_secrets_are_ignored(self) -> None:
        """An unset token adds nothing to redact."""
        assert "abc" == Redactor(("", None or "")).with_secret(None).text("abc")

    def test_secret_keys_and_nesting(self) -> None:
        """Values under secret-named keys are dropped, inside mappings and lists too."""
        value = {
            "headers": {"Authorization": "x", "accept": "json"},
            "items": ["Bearer abcdefgh12"],
        }
        assert {
            "headers": {"Authorization": REDACTED, "accept": "json"},
            "items": [f"Bearer {REDACTED}"],
        } == Redactor().value(value)


def test_secret_values_are_found_by_name_in_a_dumped_config() -> None:
    """Values under a secret-looking name count, env maps included; names that point to a
    secret (``api_key_env``), counts (``max_tokens``) and short values do not."""
    config = {
        "auth_token": "server-token-0123",
        "pools": [
            {
                "api_key_env": "OPENAI_API_KEY",
                "max_tokens": 512,
                "tokenizer": "/models/tokenizer.json",
                "provisioning": {
                    "env": {
                        "AWS_SECRET_ACCESS_KEY": "aws-secret-9f8e7d",
                        "WANDB_API_KEY": "wandb-0a1b2c3d",
                        "CUDA_VISIBLE_DEVICES": "0,1,2,3,4",
                        "SHORT_TOKEN": "1234",
                    }
                },
            }
        ],
    }
    assert ("server-token-0123", "aws-secret-9f8e7d", "wandb-0a1b2c3d") == secret_values(config)


#: One of each secret shape, as JSON fields of a large body would carry them, with the part
#: that must not survive redaction.
_LARGE_BODY_SECRETS = (
    ('"authorization": "Bearer abcdef123456"', "abcdef123456"),
    ('"header": "x-api-key=0123456789abcdef"', "0123456789abcdef"),
    ('"note": "sent bearer eyJhbGciOi.payload.sig"', "eyJhbGciOi.payload.sig"),
    ('"url": "/v1/x?api_key=abc,def&n=1"', "abc,def"),
    ('"source": "https://user,1:pa55,word@host/p"', "pa55,word"),
    ('"key": "sk-proj-0123456789abcdef"', "sk-proj-0123456789abcdef"),
    ('"hub": "hf_abcdefghijklmnop"', "hf_abcdefghijklmnop"),
    ('"engine": "said configured,\\"secret\\" here"', 'configured,\\"secret'),
    ('"raw": "zz,"secret-value"', 'zz,"secret-value'),
)


class TestLargeBodies:
    """A large answer is redacted in pieces (``text_in_pieces``): the result is ``text``'s,
    whichever piece boundary a secret lies on or across."""

    @pytest.mark.parametrize(("field", "secret"), _LARGE_BODY_SECRETS)
    def test_a_secret_is_caught_at_every_position(self, field: str, secret: str) -> None:
        """Pieces of 40 characters and records of varying lengths put the secret's field at
        every offset from a piece boundary, before, across and after it."""
        redactor = Redactor(('configured,\\"secret', 'zz,"secret-value'))
        for shift in range(48):
            records = [f'{{"id": {i}, "pad": "{"p" * (shift + i % 7)}"}}' for i in range(12)]
            records.insert(6, f'{{"pad": "{"q" * shift}", {field}, "n": 1}}')
            body = '{"items": [' + ",".join(records) + "]}"
            whole = redactor.text(body)
            assert secret not in whole
            assert whole == redactor.text_in_pieces(body, piece=40)

    def test_a_text_without_a_boundary_is_one_piece(self) -> None:
        body = "x" * 100 + " Authorization: Bearer abcdef123456 " + "y" * 100
        assert Redactor().text(body) == Redactor().text_in_pieces(body, piece=16)
        assert "abcdef123456" not in Redactor().text_in_pieces(body, piece=16)
