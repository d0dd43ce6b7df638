"""Chat messages to prompt text: the GGUF's Jinja template, or the family's turn format."""

from __future__ import annotations

import pytest

from shared.errors import BadRequest
from shared.prompt import render_messages

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


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}
CLOCK_TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {}}}

TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"id": "call_1", "function": {"name": "get_weather",
                                                  "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "tool_name": "get_weather", "tool_call_id": "call_1", "content": "18C"},
]


def test_tools_reach_the_jinja_template() -> None:
    template = ("{% if tools %}{% for t in tools %}<{{ t.function.name }}>{% endfor %}"
                "{% else %}no tools{% endif %}|{% for m in messages %}{{ m.role }} {% endfor %}")
    with_tools = render_messages(CHAT[1:2], chat_template=template, family="llama",
                                 tools=[WEATHER_TOOL, CLOCK_TOOL])
    assert with_tools.text == "<get_weather><get_time>|user "
    without = render_messages(CHAT[1:2], chat_template=template, family="llama")
    assert without.text == "no tools|user "


def test_jinja_template_sees_tool_calls_and_tool_messages() -> None:
    template = ("{% for m in messages %}{% if m.tool_calls %}"
                "{% for c in m.tool_calls %}"
                "call {{ c.function.name }}({{ c.function.arguments.city }})"
                "{% endfor %}{% elif m.role == 'tool' %} {{ m.tool_name }}={{ m.content }}"
                "{% endif %}{% endfor %}")
    rendered = render_messages(TOOL_CHAT, chat_template=template, family="llama")
    assert rendered.text == "call get_weather(Paris) get_weather=18C"


def test_gemma_renders_tool_calls_as_json_and_tool_results_as_user_turns() -> None:
    rendered = render_messages(TOOL_CHAT, chat_template=None, family="gemma3",
                               tools=[WEATHER_TOOL])
    assert rendered.text == (
        "<start_of_turn>user\nWeather in Paris?<end_of_turn>\n"
        '<start_of_turn>model\n{"name": "get_weather", "arguments": {"city": "Paris"}}'
        "<end_of_turn>\n"
        "<start_of_turn>user\n18C<end_of_turn>\n"
        "<start_of_turn>model\n"
    )


def test_chatml_renders_tool_calls_after_content_and_a_tool_role() -> None:
    messages = [
        TOOL_CHAT[0],
        {"role": "assistant", "content": "Checking.", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}},
            {"function": {"name": "get_time", "arguments": {}}}]},
        TOOL_CHAT[2],
    ]
    rendered = render_messages(messages, chat_template=None, family="mystery")
    assert rendered.text == (
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\nChecking.\n"
        '{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
        '{"name": "get_time", "arguments": {}}<|im_end|>\n'
        "<|im_start|>tool\n18C<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
