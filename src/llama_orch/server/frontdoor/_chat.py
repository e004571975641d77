"""Chat turns to a prompt, for engines that are sent a prompt rather than messages.

The model's own template comes first: llama.cpp reports the GGUF's ``tokenizer.chat_template``
in ``/props``, and it is rendered here in Jinja2's immutable sandbox (a template is data from a
model file, so it must not reach Python attributes or mutate anything). Without one, the
documented default below (ChatML) is used. The prompt also feeds admission's guardrails (its
size), and it is what the mock engine hashes, so a chat is answered deterministically.
"""

from __future__ import annotations

from collections.abc import Sequence

from jinja2 import Template, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llama_orch.contracts.engine import ChatMessage
from llama_orch.errors import InvalidParams

#: The default template (ChatML), used when the engine reports none.
DEFAULT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_ENV = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
_COMPILED: dict[str, Template] = {}


def _raise_exception(message: str) -> None:
    # Hugging Face templates call raise_exception() to refuse a conversation they cannot render.
    raise InvalidParams(f"the model's chat template refused the messages: {message}")


def render_chat(
    messages: Sequence[ChatMessage],
    template: str | None = None,
    *,
    bos_token: str = "",
    eos_token: str = "",
    max_bytes: int | None = None,
) -> str:
    """The prompt for ``messages``, ending where the assistant's answer begins.

    With ``max_bytes``, rendering stops as soon as the prompt is known to be longer: the work
    (on the event loop) stays bounded by the limit, not by how many messages a body holds.
    """
    source = template or DEFAULT_TEMPLATE
    compiled = _COMPILED.get(source)
    try:
        if compiled is None:
            compiled = _COMPILED[source] = _ENV.from_string(source)
        pieces = compiled.generate(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            bos_token=bos_token,
            eos_token=eos_token,
            raise_exception=_raise_exception,
        )
        if max_bytes is None:
            return "".join(pieces)
        out: list[str] = []
        chars = 0
        for piece in pieces:
            out.append(piece)
            chars += len(piece)
            if chars > max_bytes:  # a character is at least one byte
                raise InvalidParams(
                    f"the chat's prompt is over {max_bytes} bytes; this server accepts at "
                    "most that (server.max_prompt_bytes): send fewer or shorter messages"
                )
        return "".join(out)
    except TemplateError as exc:
        raise InvalidParams(
            f"the model's chat template cannot be rendered ({type(exc).__name__}: {exc}); "
            "send a plain completion instead"
        ) from None
