"""A Responses API request as the native chat: input items as messages, function tools, the tool
choice, `text.format` and `reasoning.effort`.

Everything becomes what /api/chat and /v1/chat/completions already hand to `Inference`: messages
in Ollama's shape (tool calls with object arguments, tool results naming their call), tools in the
chat API's `{"type": "function", "function": {...}}` shape, `format` ("json" or a schema: the
grammar path) and a think value.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

from gateway import images
from gateway.formats import openai_format
from gateway.inference import Message
from gateway.tools import Tool
from shared.errors import BadRequest

ROLES = {"user": "user", "assistant": "assistant", "system": "system", "developer": "system"}

_TEXT_PARTS = ("input_text", "output_text", "text", "summary_text", "reasoning_text")

# A reasoning item's `encrypted_content` as this server writes it: the thinking, base64, behind a
# prefix, so that a blob from another server (OpenAI's really is encrypted) is told apart and
# left out rather than shown to the model as text.
ENCRYPTED_PREFIX = "corral1:"


def encrypt_thinking(thinking: str) -> str:
    return ENCRYPTED_PREFIX + base64.b64encode(thinking.encode()).decode()


def _decrypt_thinking(blob: Any) -> str:
    if not isinstance(blob, str) or not blob.startswith(ENCRYPTED_PREFIX):
        return ""
    try:
        return base64.b64decode(blob[len(ENCRYPTED_PREFIX):], validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""


# --- tools ---------------------------------------------------------------------------------------


def _function(tool: dict[str, Any], where: str, namespace: str = "") -> Tool:
    name = tool.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"{where}.name is required")
    params = tool.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequest(f"{where}.parameters must be a JSON schema object")
    description = tool.get("description")
    if description is not None and not isinstance(description, str):
        raise BadRequest(f"{where}.description must be a string")
    fn: dict[str, Any] = {"name": qualified(namespace, name)}
    if description:
        fn["description"] = description
    fn["parameters"] = params or {"type": "object", "properties": {}}
    return {"type": "function", "function": fn}


def qualified(namespace: str | None, name: str) -> str:
    """A namespaced function's name as the model sees it (`multi_agent_v1.spawn_agent`)."""
    return f"{namespace}.{name}" if namespace and not name.startswith(namespace + ".") else name


def function_tools(raw: Any) -> tuple[list[Tool], dict[str, tuple[str, str]]]:
    """Responses function tools (`{"type": "function", "name", "parameters"}`) in the chat
    shape, and the functions of `namespace` tools (Codex groups some so) under qualified names,
    with the (namespace, name) each stands for. A built-in tool (web_search, file_search,
    computer use, code interpreter, MCP, ...) is a 400: this server runs none of them."""
    if raw is None:
        return [], {}
    if not isinstance(raw, list):
        raise BadRequest("tools must be an array")
    tools: list[Tool] = []
    namespaced: dict[str, tuple[str, str]] = {}
    for i, tool in enumerate(raw):
        where = f"tools[{i}]"
        if not isinstance(tool, dict):
            raise BadRequest(f"{where} must be an object")
        kind = tool.get("type")
        if kind == "function":
            tools.append(_function(tool, where))
        elif kind == "namespace":
            namespace, members = tool.get("name"), tool.get("tools")
            if not isinstance(namespace, str) or not namespace:
                raise BadRequest(f"{where}.name is required")
            if not isinstance(members, list):
                raise BadRequest(f"{where}.tools must be an array")
            for j, member in enumerate(members):
                if not isinstance(member, dict) or member.get("type") != "function":
                    raise BadRequest(f"{where}.tools[{j}] must be a function tool")
                tools.append(_function(member, f"{where}.tools[{j}]", namespace))
                namespaced[tools[-1]["function"]["name"]] = (namespace, member["name"])
        else:
            shown = json.dumps(kind)[:64]
            raise BadRequest(f"{where}: tool type {shown} is not supported: this server runs "
                             "no built-in tools; only function tools (and namespaces of them) "
                             "can be used")
    return tools, namespaced


def tool_choice(raw: Any) -> Any:
    """The Responses tool_choice in the chat API's shape (gateway.tools.check_tool_choice)."""
    if raw is None or raw in ("auto", "none", "required"):
        return raw
    if isinstance(raw, dict) and raw.get("type") == "function":
        name = raw.get("name")
        if not isinstance(name, str) or not name:
            raise BadRequest("tool_choice of type function needs a name")
        return {"type": "function", "function": {"name": name}}
    if isinstance(raw, dict) and isinstance(raw.get("type"), str):
        raise BadRequest(f"tool_choice of type {raw['type'][:64]!r} is not supported: only "
                         '"auto", "none", "required" or {"type": "function", "name": ...}')
    raise BadRequest('tool_choice must be "auto", "none", "required" or '
                     '{"type": "function", "name": ...}')


# --- text.format ---------------------------------------------------------------------------------


def text_format(raw: Any) -> str | dict[str, Any] | None:
    """`text.format` as Ollama's format: None for text, "json", or the JSON schema."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise BadRequest("text must be an object")
    return openai_format(raw.get("format"), "text.format", nested=False)


# --- input items ---------------------------------------------------------------------------------


def _part_text(part: Any, where: str, pictures: list[str] | None = None) -> str:
    """A content part's text; an input_image part's image goes to `pictures` (as base64: the
    conversation is stored as JSON for previous_response_id) where the content may have one."""
    if isinstance(part, str):
        return part
    kind = part.get("type") if isinstance(part, dict) else None
    if kind in _TEXT_PARTS:
        text = part.get("text")
        if not isinstance(text, str):
            raise BadRequest(f"{where}: a {kind} part needs a string text")
        return text
    if kind == "refusal":
        refusal = part.get("refusal")
        return refusal if isinstance(refusal, str) else ""
    if kind == "input_image" and pictures is not None:
        if part.get("image_url") is None and part.get("file_id") is not None:
            raise BadRequest(f"{where}.file_id: files are not supported here: send the image "
                             "as a base64 data URL in image_url")
        data = images.from_url(part.get("image_url"), f"{where}.image_url")
        pictures.append(base64.b64encode(data).decode())
        return ""
    if kind in ("input_file", "input_audio"):
        raise BadRequest(f"{where}: {kind} is not supported")
    raise BadRequest(f"{where}: unknown content part type {json.dumps(kind)[:64]}")


def _content(raw: Any, where: str, pictures: list[str] | None = None) -> str:
    if raw is None:
        return ""
    if isinstance(raw, str):
        return raw
    if isinstance(raw, list):
        return "".join(_part_text(part, f"{where}[{i}]", pictures) for i, part in enumerate(raw))
    raise BadRequest(f"{where} must be a string or an array of content parts")


def _with_images(message: Message, pictures: list[str]) -> Message:
    if pictures:  # read before the text, as Ollama's layer puts a message's images
        message["images"] = pictures
    return message


def _reasoning_text(item: dict[str, Any]) -> str:
    """An earlier turn's thinking from a reasoning item: its reasoning text, else its summary,
    else what this server put in its encrypted_content."""
    for key in ("content", "summary"):
        parts = item.get(key)
        if isinstance(parts, list) and parts:
            return "".join(_part_text(p, f"reasoning.{key}") for p in parts)
    return _decrypt_thinking(item.get("encrypted_content"))


def _call_names(messages: list[Message]) -> dict[str, str]:
    names = {}
    for message in messages:
        for call in message.get("tool_calls") or ():
            if call.get("id"):
                names[call["id"]] = call["function"]["name"]
    return names


def input_messages(raw: Any, history: list[Message]) -> list[Message]:
    """The request's `input` (a string, or message, function_call, function_call_output and
    reasoning items) as native chat messages. `history`: the conversation so far (from
    previous_response_id), where a function_call_output may find its call."""
    if raw is None:
        return []
    if isinstance(raw, str):
        return [{"role": "user", "content": raw}]
    if not isinstance(raw, list):
        raise BadRequest("input must be a string or an array of input items")
    messages: list[Message] = []
    names = _call_names(history)
    thinking = ""  # a reasoning item's thinking, for the assistant turn after it

    def assistant() -> Message:
        """The assistant message a function call joins: the last one, or a new one."""
        nonlocal thinking
        if not (messages and messages[-1]["role"] == "assistant"):
            messages.append({"role": "assistant", "content": ""})
        last = messages[-1]
        if thinking:
            last["thinking"], thinking = thinking, ""
        return last

    for index, item in enumerate(raw):
        where = f"input[{index}]"
        if isinstance(item, str):  # (not in OpenAI's schema, but plain enough)
            messages.append({"role": "user", "content": item})
            continue
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object")
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            role = item.get("role")
            if role not in ROLES:
                raise BadRequest(f"{where}.role must be one of user, assistant, system, "
                                 f"developer (got {json.dumps(role)[:64]})")
            pictures: list[str] = []
            content = _content(item.get("content"), f"{where}.content", pictures)
            if role == "assistant":  # a function call after it joins this message
                messages.append(_with_images({"role": "assistant", "content": content},
                                             pictures))
                if thinking:
                    messages[-1]["thinking"], thinking = thinking, ""
            else:
                messages.append(_with_images({"role": ROLES[role], "content": content},
                                             pictures))
        elif kind == "function_call":
            name, call_id = item.get("name"), item.get("call_id")
            if not isinstance(name, str) or not name:
                raise BadRequest(f"{where}.name is required")
            if not isinstance(call_id, str) or not call_id:
                raise BadRequest(f"{where}.call_id is required")
            arguments = item.get("arguments") or "{}"
            try:
                parsed = json.loads(arguments) if isinstance(arguments, str) else None
            except ValueError:
                parsed = None
            if not isinstance(parsed, dict):
                raise BadRequest(f"{where}.arguments must be a JSON object in a string")
            namespace = item.get("namespace")
            name = qualified(namespace if isinstance(namespace, str) else None, name)
            message = assistant()
            calls = message.setdefault("tool_calls", [])
            calls.append({"id": call_id, "function": {"index": len(calls), "name": name,
                                                      "arguments": parsed}})
            names[call_id] = name
        elif kind == "function_call_output":
            call_id = item.get("call_id")
            if not isinstance(call_id, str) or call_id not in names:
                raise BadRequest(f"No tool call found for function call output with call_id "
                                 f"{json.dumps(call_id)[:80]}.")
            shown: list[str] = []
            output = _content(item.get("output"), f"{where}.output", shown)
            messages.append(_with_images({"role": "tool", "content": output,
                                          "tool_call_id": call_id,
                                          "tool_name": names[call_id]}, shown))
        elif kind == "reasoning":
            thinking = _reasoning_text(item)
        else:
            raise BadRequest(f"{where}: input item type {json.dumps(kind)[:64]} is not "
                             "supported (message, function_call, function_call_output and "
                             "reasoning items are)")
    return messages
