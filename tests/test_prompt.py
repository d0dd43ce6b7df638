"""Chat messages to prompt text: the GGUF's Jinja template, or the family's turn format."""

from __future__ import annotations

import pytest

from runner.prompt import render_messages
from shared.errors import BadRequest

CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Colors?"},
]


def test_gemma_turns_fold_system_into_first_user_turn() -> None:
    rendered = render_messages(CHAT, chat_template=None, family="gemma3")
    assert rendered.text == (
        "<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n"
        "<start_of_turn>model\nHello!<end_of_turn>\n"
        "<start_of_turn>user\nColors?<end_of_turn>\n"
        "<start_of_turn>model\n"
    )
    assert rendered.stops == ("<end_of_turn>",)


def test_unknown_family_gets_chatml() -> None:
    rendered = render_messages(CHAT[1:2], chat_template=None, family="mystery")
    assert rendered.text == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert rendered.stops == ("<|im_end|>",)


def test_jinja_template_is_used_and_bos_not_doubled() -> None:
    template = ("{{ bos_token }}{% for m in messages %}[{{ m.role }}]{{ m.content }}"
                "{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}")
    rendered = render_messages(CHAT[1:2], chat_template=template, family="llama",
                               bos_token="<s>", eos_token="</s>")
    assert rendered.text == "[user]Hi[assistant]"
    assert rendered.stops == ("</s>",)


def test_template_errors_are_bad_requests() -> None:
    template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(BadRequest, match="roles must alternate"):
        render_messages(CHAT, chat_template=template, family="llama")


def test_template_sandbox_blocks_attribute_escapes() -> None:
    template = "{{ messages.__class__.__mro__ }}"
    with pytest.raises(BadRequest):
        render_messages(CHAT, chat_template=template, family="llama")
