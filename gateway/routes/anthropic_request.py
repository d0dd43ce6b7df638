"""An Anthropic Messages request as the native chat's pieces: messages, tools, think, options.

Content blocks become native messages the way Ollama's Anthropic layer reads them: text blocks
are joined, `thinking` blocks become the assistant's thinking, `tool_use` blocks its tool calls
(input as arguments), and each `tool_result` a `tool` message named after the call it answers.
Fields that steer Anthropic's own service (`cache_control`, `metadata`, `context_management`,
`redacted_thinking` blocks) are accepted and have nothing to do here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway import images
from gateway.http import field as typed_field
from gateway.inference import Message, check_messages
from gateway.tools import Tool
from shared.errors import BadRequest

_EFFORTS = ("low", "medium", "high", "max")


@dataclass
class MessagesRequest:
    """The parts of a /v1/messages (or count_tokens) body the native chat path takes."""

    model: Any
    messages: list[Message]
    tools: list[Tool]
    tool_choice: str | None  # as gateway.tools reads it: None, "none", "required" or a name
    parallel: bool
    thinking: str | None  # "enabled", "disabled", "adaptive" (or "between_tools") or None
    effort: str | None  # output_config.effort
    format: dict[str, Any] | None  # output_config.format's JSON schema
    max_tokens: int | None
    options: dict[str, Any] = field(default_factory=dict)
    stop_sequences: list[str] = field(default_factory=list)
    stream: bool = False


def parse(data: dict[str, Any], *, count_only: bool = False) -> MessagesRequest:
    """The request's fields, checked; `count_only`: a count_tokens body (no max_tokens)."""
    max_tokens = None
    if not count_only:
        max_tokens = data.get("max_tokens")
        if max_tokens is None:
            raise BadRequest("max_tokens: Field required")
        if type(max_tokens) is not int or max_tokens < 1:
            raise BadRequest("max_tokens: must be an integer of at least 1")
    for name in ("metadata", "context_management"):
        typed_field(data, name, dict)  # accepted; nothing to do here
    tools = _tools(data.get("tools"))
    choice, parallel = _tool_choice(data.get("tool_choice"), tools)
    thinking, effort = _thinking(data)
    return MessagesRequest(
        model=data.get("model"),
        messages=_messages(data.get("system"), data.get("messages")),
        tools=tools, tool_choice=choice, parallel=parallel, thinking=thinking, effort=effort,
        format=_format(data.get("output_config")), max_tokens=max_tokens,
        options=_options(data), stop_sequences=_stop_sequences(data.get("stop_sequences")),
        stream=bool(typed_field(data, "stream", bool, False)))


# --- sampling ------------------------------------------------------------------------------------


def _options(data: dict[str, Any]) -> dict[str, Any]:
    """Anthropic's sampling fields as Ollama options; an unset one leaves the model's own."""
    options: dict[str, Any] = {}
    temperature = typed_field(data, "temperature", (int, float))
    if temperature is not None:
        if not 0 <= temperature <= 1:
            raise BadRequest("temperature: must be between 0 and 1")
        options["temperature"] = temperature
    top_p = typed_field(data, "top_p", (int, float))
    if top_p is not None:
        if not 0 <= top_p <= 1:
            raise BadRequest("top_p: must be between 0 and 1")
        options["top_p"] = top_p
    top_k = typed_field(data, "top_k", int)
    if top_k is not None:
        if top_k < 0:
            raise BadRequest("top_k: must be at least 0")
        options["top_k"] = top_k
    if data.get("max_tokens") is not None:
        options["num_predict"] = data["max_tokens"]
    return options


def _stop_sequences(raw: Any) -> list[str]:
    if raw is None:
        return []
    if not isinstance(raw, list) or not all(isinstance(s, str) and s for s in raw):
        raise BadRequest("stop_sequences: must be an array of non-empty strings")
    return raw


def _thinking(data: dict[str, Any]) -> tuple[str | None, str | None]:
    thinking = typed_field(data, "thinking", dict)
    kind = None
    if thinking is not None:
        kind = thinking.get("type")
        if kind not in ("enabled", "disabled", "adaptive", "between_tools"):
            raise BadRequest('thinking.type: must be "enabled", "disabled", "adaptive" or '
                             '"between_tools"')
        if kind == "between_tools":
            kind = "adaptive"  # the model decides; corral's decide by their template
        budget = thinking.get("budget_tokens")
        if kind == "enabled" and (type(budget) is not int or budget < 1):
            raise BadRequest("thinking.budget_tokens: must be a positive integer")
    config = typed_field(data, "output_config", dict) or {}
    effort = config.get("effort")
    if effort is not None and effort not in (*_EFFORTS, "xhigh"):
        raise BadRequest('output_config.effort: must be "low", "medium", "high", "xhigh" or '
                         '"max"')
    return kind, ("high" if effort == "xhigh" else effort)


def _format(config: Any) -> dict[str, Any] | None:
    """Structured output (`output_config.format`, a JSON schema): the grammar path."""
    spec = config.get("format") if isinstance(config, dict) else None
    if spec is None:
        return None
    if not isinstance(spec, dict) or spec.get("type") != "json_schema" \
            or not isinstance(spec.get("schema"), dict):
        raise BadRequest('output_config.format: must be {"type": "json_schema", "schema": {...}}')
    return spec["schema"]


# --- tools ---------------------------------------------------------------------------------------


def _tools(raw: Any) -> list[Tool]:
    """Anthropic's tools (name, description, input_schema) as function tools."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise BadRequest("tools: must be an array")
    tools: list[Tool] = []
    for i, tool in enumerate(raw):
        if not isinstance(tool, dict):
            raise BadRequest(f"tools.{i}: must be an object")
        kind = tool.get("type")
        if kind not in (None, "custom"):
            raise BadRequest(f"tools.{i}: the server tool {kind!r} is not supported; "
                             "send a client tool with name and input_schema")
        name, schema = tool.get("name"), tool.get("input_schema")
        if not isinstance(name, str) or not name:
            raise BadRequest(f"tools.{i}.name: Field required")
        if not isinstance(schema, dict):
            raise BadRequest(f"tools.{i}.input_schema: must be a JSON schema object")
        function: dict[str, Any] = {"name": name, "parameters": schema}
        if isinstance(tool.get("description"), str):
            function["description"] = tool["description"]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(raw: Any, tools: list[Tool]) -> tuple[str | None, bool]:
    """`tool_choice` as the native choice, and whether parallel calls are allowed."""
    if raw is None:
        return None, True
    if not isinstance(raw, dict) or raw.get("type") not in ("auto", "any", "tool", "none"):
        raise BadRequest('tool_choice.type: must be "auto", "any", "tool" or "none"')
    kind = raw["type"]
    parallel = not typed_field(raw, "disable_parallel_tool_use", bool, False)
    if kind == "auto":
        return None, parallel
    if kind == "none":
        return "none", parallel
    if not tools:
        raise BadRequest(f'tool_choice {kind!r} needs tools to choose from')
    if kind == "any":
        return "required", parallel
    name = raw.get("name")
    if name not in [tool["function"]["name"] for tool in tools]:
        raise BadRequest(f"tool_choice.name: {name!r} is not one of the tools")
    return name, parallel


# --- messages ------------------------------------------------------------------------------------


def _text(raw: Any, where: str, pictures: list[bytes] | None = None) -> str:
    """A `system` or tool_result content: a string or text blocks (joined by newlines). Image
    blocks go to `pictures` where the content may have them (a tool result's screenshot)."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, list):
        raise BadRequest(f"{where}: must be a string or an array of content blocks")
    parts = []
    for i, block in enumerate(raw):
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "image" and pictures is not None:
            pictures.append(images.from_anthropic_source(block.get("source"), f"{where}.{i}"))
            continue
        if kind != "text" or not isinstance(block.get("text"), str):
            raise BadRequest(f"{where}.{i}: must be a text block")
        parts.append(block["text"])
    return "\n".join(parts)


def _messages(system: Any, raw: Any) -> list[Message]:
    native: list[Message] = []
    if system is not None:
        text = _text(system, "system")
        if text:
            native.append({"role": "system", "content": text})
    if not isinstance(raw, list) or not raw:
        raise BadRequest("messages: at least one message is required")
    names: dict[str, str] = {}  # tool_use id -> tool name, for the results that answer them
    for i, message in enumerate(raw):
        if not isinstance(message, dict):
            raise BadRequest(f"messages.{i}: must be an object")
        role = message.get("role")
        if role not in ("user", "assistant", "system"):  # Claude Code sends a system message
            raise BadRequest(f'messages.{i}.role: must be "user" or "assistant"')
        native.extend(_message(role, message.get("content"), f"messages.{i}", names))
    return check_messages(native)


def _message(role: str, content: Any, where: str, names: dict[str, str]) -> list[Message]:
    """One Anthropic message as native ones: tool results first (each its own `tool` message),
    then the message's text, images, thinking and tool calls."""
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    if not isinstance(content, list):
        raise BadRequest(f"{where}.content: must be a string or an array of content blocks")
    texts: list[str] = []
    pictures: list[bytes] = []
    thinking: list[str] = []
    calls: list[dict[str, Any]] = []
    results: list[Message] = []
    for j, block in enumerate(content):
        at = f"{where}.content.{j}"
        kind = block.get("type") if isinstance(block, dict) else None
        if kind == "text":
            if not isinstance(block.get("text"), str):
                raise BadRequest(f"{at}.text: Field required")
            texts.append(block["text"])
        elif kind == "image":
            pictures.append(images.from_anthropic_source(block.get("source"), at))
        elif kind == "document":
            raise BadRequest("document input is not supported: send the text")
        elif kind == "thinking":
            if isinstance(block.get("thinking"), str):
                thinking.append(block["thinking"])
        elif kind == "redacted_thinking":
            pass  # encrypted by Anthropic for its own models: nothing a local model can read
        elif kind == "tool_use":
            call_id, name, arguments = block.get("id"), block.get("name"), block.get("input", {})
            if not isinstance(call_id, str) or not isinstance(name, str) or not name:
                raise BadRequest(f"{at}: a tool_use block needs id and name")
            if not isinstance(arguments, dict):
                raise BadRequest(f"{at}.input: must be an object")
            names[call_id] = name
            calls.append({"id": call_id, "function": {"index": len(calls), "name": name,
                                                      "arguments": arguments}})
        elif kind == "tool_result":
            call_id = block.get("tool_use_id")
            if not isinstance(call_id, str):
                raise BadRequest(f"{at}.tool_use_id: Field required")
            shown: list[bytes] = []
            text = _text(block.get("content", ""), f"{at}.content", shown)
            if typed_field(block, "is_error", bool, False):
                text = "Error: " + text  # the model sees that its call failed
            result: Message = {"role": "tool", "content": text, "tool_call_id": call_id,
                               "tool_name": names.get(call_id, "")}
            if shown:
                result["images"] = shown
            results.append(result)
        else:
            raise BadRequest(f"{at}.type: unknown content block type {kind!r}")
    out = list(results)
    if texts or pictures or thinking or calls or not results:
        item: Message = {"role": role, "content": "\n".join(texts)}
        if pictures:  # read before the text, as Ollama's layer puts a message's images
            item["images"] = pictures
        if thinking:
            item["thinking"] = "\n".join(thinking)
        if calls:
            item["tool_calls"] = calls
        out.append(item)
    return out
