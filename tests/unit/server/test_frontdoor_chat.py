"""Chat templates: the documented default, a model's own template, and the sandbox."""

from __future__ import annotations

import pytest

from llama_orch.contracts.engine import ChatMessage
from llama_orch.errors import InvalidParams
from llama_orch.server.frontdoor._chat import render_chat

TURNS = (ChatMessage("system", "Be brief."), ChatMessage("user", "Hi"))


class TestRenderChat:
    def test_default_is_chatml(self) -> None:
        """Without a model template, turns are ChatML ending at the assistant's turn."""
        expected = (
            "<|im_start|>system\nBe brief.<|im_end|>\n"
            "<|im_start|>user\nHi<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        assert expected == render_chat(TURNS)

    def test_model_template_with_special_tokens(self) -> None:
        """A GGUF-style template sees messages, bos_token and add_generation_prompt."""
        template = (
            "{{ bos_token }}{% for m in messages %}[{{ m['role'] }}]{{ m['content'] }}"
            "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}"
        )
        expected = "<s>[system]Be brief.[user]Hi[assistant]"
        assert expected == render_chat(TURNS, template, bos_token="<s>")

    def test_template_refusal_is_invalid_params(self) -> None:
        """raise_exception() in a template refuses the request with its message."""
        with pytest.raises(InvalidParams, match="roles must alternate"):
            render_chat(TURNS, "{{ raise_exception('roles must alternate') }}")

    def test_sandbox_blocks_python_internals(self) -> None:
        """A template cannot reach Python internals; that is an InvalidParams, not a crash."""
        with pytest.raises(InvalidParams, match="cannot be rendered"):
            render_chat(TURNS, "{{ messages.__class__.__mro__[1].__subclasses__() }}")


class TestPromptLimit:
    def test_a_prompt_within_the_limit_renders_whole(self) -> None:
        """The limit changes nothing for a prompt that fits it, to the byte."""
        whole = render_chat(TURNS)
        assert whole == render_chat(TURNS, max_bytes=len(whole.encode()))

    def test_rendering_stops_once_the_prompt_is_over_the_limit(self) -> None:
        """Many messages are refused as soon as the prompt is over ``max_bytes``: the template's
        end (here a refusal of its own) is never reached."""
        template = (
            "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
            "{{ raise_exception('rendered to the end') }}"
        )
        turns = [ChatMessage("user", "") for _ in range(10_000)]
        with pytest.raises(InvalidParams) as info:
            render_chat(turns, template, max_bytes=1000)
        assert "the chat's prompt is over 1000 bytes" in str(info.value)
