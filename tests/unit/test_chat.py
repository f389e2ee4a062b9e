"""Chat messages into a prompt: the documented default template, a checkpoint's own (Hugging Face style, with
raise_exception), and a template from a checkpoint treated as untrusted (sandboxed)."""

import pytest

from phase2_ray.serving.chat import DEFAULT_CHAT_TEMPLATE, TemplateError, render_chat
from phase2_ray.serving.requests import ChatCompletionRequest


def test_the_default_template_is_chatml_as_text():
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    assert render_chat(msgs) == (
        "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n"
    )
    assert render_chat(msgs, None) == render_chat(msgs, DEFAULT_CHAT_TEMPLATE)


def test_a_checkpoints_own_template_and_its_refusals():
    llama_like = (
        "{% if messages[0]['role'] != 'user' %}{{ raise_exception('Conversation must start with the user') }}"
        "{% endif %}{% for m in messages %}[{{ m['role'] | upper }}] {{ m['content'] }}\n{% endfor %}[ASSISTANT]"
    )
    assert render_chat([{"role": "user", "content": "hi"}], llama_like) == "[USER] hi\n[ASSISTANT]"
    with pytest.raises(TemplateError, match="must start with the user"):
        render_chat([{"role": "assistant", "content": "hi"}], llama_like)
    with pytest.raises(TemplateError, match="does not compile"):
        render_chat([{"role": "user", "content": "hi"}], "{% for m in messages %}")


def test_a_template_cannot_reach_python_internals():
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(TemplateError):
        render_chat([{"role": "user", "content": "x"}], evil)


def test_chat_request_limits():
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert ChatCompletionRequest.model_validate(base).limit == 16
    assert ChatCompletionRequest.model_validate({**base, "max_completion_tokens": 7}).limit == 7
    assert (
        ChatCompletionRequest.model_validate({**base, "max_tokens": 7, "max_completion_tokens": 7}).limit == 7
    )
    with pytest.raises(ValueError, match="disagree"):
        ChatCompletionRequest.model_validate({**base, "max_tokens": 3, "max_completion_tokens": 4})
