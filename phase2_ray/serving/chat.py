"""Chat messages into the prompt text a model sees: the checkpoint's own chat template where it has one (a
Hugging Face model's tokenizer_config.json `chat_template`), else phase2_ray's documented default. Templates are
Jinja, rendered in a sandbox as transformers renders them: a template that came with a checkpoint is untrusted input.

The default (ChatML's layout, as plain text: phase2_ray's tokenizers have no special tokens for it):

    <|im_start|>system
    You are ...<|im_end|>
    <|im_start|>user
    Hello<|im_end|>
    <|im_start|>assistant
"""

from __future__ import annotations

from functools import lru_cache

DEFAULT_CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""phase2_ray's chat template for checkpoints without one; exports carry it (tokenizer_config.json)."""


class TemplateError(ValueError):
    """A chat template that does not render for these messages; the message says why."""


@lru_cache(maxsize=16)
def _compiled(template: str):
    from jinja2.exceptions import TemplateError as JinjaError
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True)

    def raise_exception(message: str):  # what Hugging Face templates call to refuse a conversation
        raise TemplateError(message)

    env.globals["raise_exception"] = raise_exception
    try:
        return env.from_string(template)
    except JinjaError as e:
        raise TemplateError(f"chat template does not compile: {e}") from e


def render_chat(messages: list[dict], template: str | None = None, **extra) -> str:
    """The prompt text for `messages` ([{role, content}]), ready for the assistant's turn."""
    from jinja2.exceptions import TemplateError as JinjaError

    try:
        return _compiled(template or DEFAULT_CHAT_TEMPLATE).render(
            messages=messages, add_generation_prompt=True, **extra
        )
    except TemplateError:
        raise
    except JinjaError as e:
        raise TemplateError(f"chat template failed: {e}") from e
