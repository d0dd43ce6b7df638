# ruff: noqa: E501  (the templates below are kept verbatim, long lines included)
"""Tiny GGUF models of each family, written with the `gguf` library: the family's real
architecture (tensor names and shapes llama.cpp 0.3.36 loads), its real special tokens in a small
vocabulary, random small weights, and Ollama's template and stop parameters for it.

Random weights write garbage, so tests force the text they need (a grammar, `format`) and check
what the server does around it: templates, stop and special tokens, BOS, tool calls, thinking.
Every model has 2 layers and grouped-query attention (4 heads, 2 KV heads).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

N_EMBD = 64
N_HEAD = 4
N_HEAD_KV = 2
HEAD_DIM = N_EMBD // N_HEAD
N_FF = 128
N_LAYER = 2
N_CTX_TRAIN = 4096



@dataclass(frozen=True)
class Dims:
    """A model's size: the tests' tiny default, or larger for benchmarks."""

    n_embd: int = N_EMBD
    n_head: int = N_HEAD
    n_head_kv: int = N_HEAD_KV
    n_ff: int = N_FF
    n_layer: int = N_LAYER
    n_ctx_train: int = N_CTX_TRAIN


# gguf token types
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, BYTE = 1, 2, 3, 4, 6


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte-level alphabet: each byte as a printable character (BPE vocabularies)."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = keep[:]
    n = 0
    for b in range(256):
        if b not in keep:
            keep.append(b)
            chars.append(256 + n)
            n += 1
    return dict(zip(keep, (chr(c) for c in chars), strict=True))


@dataclass
class Family:
    """One family's tiny model: architecture, tokenizer, special tokens, Ollama's Modelfile."""

    name: str  # the model name tests create it under
    arch: str
    tokenizer: str  # "gpt2" (byte-level BPE), "llama" (SentencePiece), "bert" (WordPiece)
    pre: str  # tokenizer.ggml.pre
    specials: list[tuple[str, int]]  # (text, token type), in id order after any fixed ones
    bos: str | None
    eos: str
    eot: str | None = None
    add_bos: bool = False
    template: str = ""  # Ollama's Go template for the family
    stops: list[str] = field(default_factory=list)  # the Modelfile's PARAMETER stop lines
    pooling: int = 0  # embedding models: 1 mean, 2 cls
    # The token a rendered prompt ends with, which a scripted model starts from: a newline,
    # except where llama.cpp strips the whitespace after special tokens (Phi-3's vocabulary).
    prompt_end: str = "\n"
    extra_kv: dict[str, object] = field(default_factory=dict)

    def modelfile(self, path: Path) -> str:
        lines = [f"FROM {path}"]
        if self.template:
            lines.append(f'TEMPLATE """{self.template}"""')
        lines += [f'PARAMETER stop "{s}"' for s in self.stops]
        return "\n".join(lines) + "\n"


# --- Ollama's templates for the families (from its library's models) --------------------------

LLAMA31 = """{{- if or .System .Tools }}<|start_header_id|>system<|end_header_id|>
{{- if .System }}

{{ .System }}
{{- end }}
{{- if .Tools }}

Cutting Knowledge Date: December 2023

When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
Question: {{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

QWEN25 = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

# Qwen3's: ChatML with tools, and thinking (`<think>` written by the model, closed empty in the
# prompt when think is false).
QWEN3 = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if and $.IsThinkSet .Thinking $last -}}
<think>{{ .Thinking }}</think>
{{ end }}{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end -}}
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

PHI3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ if $last }}<|assistant|>
{{ end }}
{{- end }}"""

GEMMA2 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user
{{ .Content }}<end_of_turn>
{{ if $last }}<start_of_turn>model
{{ end }}
{{- else if eq .Role "assistant" }}<start_of_turn>model
{{ .Content }}{{ if not $last }}<end_of_turn>
{{ end }}
{{- end }}
{{- end }}"""

MISTRAL = """{{- if .Messages }}
{{- range $index, $_ := .Messages }}
{{- if eq .Role "user" }}
{{- if and (eq (len (slice $.Messages $index)) 1) $.Tools }}[AVAILABLE_TOOLS] {{ $.Tools }}[/AVAILABLE_TOOLS]
{{- end }}[INST] {{ if and $.System (eq (len (slice $.Messages $index)) 1) }}{{ $.System }}

{{ end }}{{ .Content }}[/INST]
{{- else if eq .Role "assistant" }}
{{- if .Content }} {{ .Content }}
{{- else if .ToolCalls }}[TOOL_CALLS] [
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}]
{{- end }}</s>
{{- else if eq .Role "tool" }}[TOOL_RESULTS] {"content": {{ .Content }}} [/TOOL_RESULTS]
{{- end }}
{{- end }}
{{- else }}[INST] {{ if .System }}{{ .System }}

{{ end }}{{ .Prompt }}[/INST]
{{- end }} {{ .Response }}
{{- if .Response }}</s>
{{- end }}"""

# Granite 3's (tools as JSON lines, calls after <|tool_call|>).
GRANITE3 = """{{- if .Tools }}<|start_of_role|>available_tools<|end_of_role|>
{{- range .Tools }}
{{ . }}
{{- end }}<|end_of_text|>
{{ end }}
{{- range $index, $_ := .Messages }}<|start_of_role|>
{{- if eq .Role "tool" }}tool_response
{{- else }}{{ .Role }}
{{- end }}<|end_of_role|>
{{- if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<|tool_call|>
{{- range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{- end }}
{{- end }}
{{- if eq (len (slice $.Messages $index)) 1 }}
{{- if eq .Role "assistant" }}
{{- else }}<|end_of_text|>
<|start_of_role|>assistant<|end_of_role|>
{{- end }}
{{- else }}<|end_of_text|>
{{ end }}
{{- end }}"""

# Ollama's template/command-r.gotmpl, as it ships.
COMMAND_R_TEMPLATE = """{{- if or .Tools .System }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>
{{- if .Tools }}# Safety Preamble
The instructions in this section override those in the task description and style guide sections. Don't answer questions that are harmful or immoral.

# System Preamble
## Basic Rules
You are a powerful conversational AI trained by Cohere to help people. You are augmented by a number of tools, and your job is to use and consume the output of these tools to best help the user. You will see a conversation history between yourself and a user, ending with an utterance from the user. You will then see a specific instruction instructing you what kind of response to generate. When you answer the user's requests, you cite your sources in your answers, according to those instructions.

{{ if .System }}# User Preamble
{{ .System }}
{{- end }}

## Available Tools
Here is a list of tools that you have available to you:
{{- range .Tools }}

```python
def {{ .Function.Name }}(
{{- range $name, $property := .Function.Parameters.Properties }}{{ $name }}: {{ $property.Type }}, {{ end }}) -> List[Dict]:
    '''{{ .Function.Description }}

{{- if .Function.Parameters.Properties }}

    Args:
{{- range $name, $property := .Function.Parameters.Properties }}
        {{ $name }} ({{ $property.Type }}): {{ $property.Description }}
{{- end }}
{{- end }}
    '''
    pass
```
{{- end }}
{{- else if .System }}{{ .System }}
{{- end }}<|END_OF_TURN_TOKEN|>
{{- end }}
{{- range .Messages }}
{{- if eq .Role "system" }}
{{- continue }}
{{- end }}<|START_OF_TURN_TOKEN|>
{{- if eq .Role "user" }}<|USER_TOKEN|>{{ .Content }}
{{- if $.Tools }}<|START_OF_TURN_TOKEN|><|SYSTEM_TOKEN|>Write 'Action:' followed by a json-formatted list of actions that you want to perform in order to produce a good response to the user's last input. You can use any of the supplied tools any number of times, but you should aim to execute the minimum number of necessary actions for the input. You should use the `directly-answer` tool if calling the other tools is unnecessary. The list of actions you want to call should be formatted as a list of json objects, for example:
```json
[
    {
        "tool_name": title of the tool in the specification,
        "parameters": a dict of parameters to input into the tool as they are defined in the specs, or {} if it takes no parameters
    }
]```
{{- end }}
{{- else if eq .Role "assistant" }}<|CHATBOT_TOKEN|>
{{- if .Content }}{{ .Content }}
{{- else if .ToolCalls }}
Action: ```json
[
{{- range .ToolCalls }}
    {
        "tool_name": "{{ .Function.Name }}",
        "parameters": {{ .Function.Arguments }}
    }
{{- end }}
]```
{{- end }}
{{- else if eq .Role "tool" }}<|SYSTEM_TOKEN|><results>
console_output: {{ .Content }}
</results>
{{- end }}<|END_OF_TURN_TOKEN|>
{{- end }}<|END_OF_TURN_TOKEN|><|START_OF_TURN_TOKEN|><|CHATBOT_TOKEN|>"""

# DeepSeek-R1's (the model opens <think> itself; think false closes an empty block).
DEEPSEEK_R1 = """{{- if .System }}{{ .System }}{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1}}
{{- if eq .Role "user" }}<｜User｜>{{ .Content }}
{{- else if eq .Role "assistant" }}<｜Assistant｜>
  {{- if and $.IsThinkSet (and $last .Thinking) -}}
<think>
{{ .Thinking }}
</think>
{{- end }}{{ .Content }}{{- if not $last }}<｜end▁of▁sentence｜>{{- end }}
{{- end }}
{{- if and $last (ne .Role "assistant") }}<｜Assistant｜>
{{- if and $.IsThinkSet (not $.Think) -}}
<think>

</think>

{{ end }}
{{- end -}}
{{- end }}"""

# A harmony template of gpt-oss's shape (system, developer tools as a TypeScript namespace,
# channels per message; the prompt ends by opening the assistant's message).
HARMONY = """<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.
Reasoning: {{ if .ThinkLevel }}{{ .ThinkLevel }}{{ else }}medium{{ end }}

# Valid channels: analysis, commentary, final. Channel must be included for every message.<|end|>
{{- if .Tools }}<|start|>developer<|message|># Tools

## functions

namespace functions {
{{- range .Tools }}

// {{ .Function.Description }}
type {{ .Function.Name }} = (_: {
{{- range $name, $prop := .Function.Parameters.Properties }}
{{ $name }}: {{ toTypeScriptType $prop }},
{{- end }}
}) => any;
{{- end }}

} // namespace functions<|end|>
{{- end }}
{{- range .Messages }}
{{- if eq .Role "user" }}<|start|>user<|message|>{{ .Content }}<|end|>
{{- else if eq .Role "assistant" }}
{{- if .Thinking }}<|start|>assistant<|channel|>analysis<|message|>{{ .Thinking }}<|end|>{{ end }}
{{- if .Content }}<|start|>assistant<|channel|>final<|message|>{{ .Content }}<|end|>{{ end }}
{{- range .ToolCalls }}<|start|>assistant<|channel|>commentary to=functions.{{ .Function.Name }} <|constrain|>json<|message|>{{ .Function.Arguments }}<|call|>{{ end }}
{{- else if eq .Role "tool" }}<|start|>functions.{{ .ToolName }} to=assistant<|channel|>commentary<|message|>{{ .Content }}<|end|>
{{- end }}
{{- end }}<|start|>assistant"""

# --- the families -----------------------------------------------------------------------------

LLAMA = Family(
    name="tiny-llama3", arch="llama", tokenizer="gpt2", pre="llama-bpe",
    specials=[("<|begin_of_text|>", CONTROL), ("<|end_of_text|>", CONTROL),
              ("<|start_header_id|>", CONTROL), ("<|end_header_id|>", CONTROL),
              ("<|eot_id|>", CONTROL), ("<|eom_id|>", CONTROL), ("<|python_tag|>", CONTROL)],
    bos="<|begin_of_text|>", eos="<|eot_id|>", eot="<|eot_id|>", add_bos=True,
    template=LLAMA31, stops=["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    extra_kv={"rope.dimension_count": HEAD_DIM})
QWEN2 = Family(
    name="tiny-qwen2.5", arch="qwen2", tokenizer="gpt2", pre="qwen2",
    specials=[("<|endoftext|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
              ("<|object_ref_start|>", CONTROL), ("<tool_call>", USER_DEFINED),
              ("</tool_call>", USER_DEFINED)],
    bos="<|endoftext|>", eos="<|im_end|>", template=QWEN25, stops=["<|im_start|>", "<|im_end|>"])
QWEN3_FAMILY = Family(
    name="tiny-qwen3", arch="qwen3", tokenizer="gpt2", pre="qwen2",
    specials=[("<|endoftext|>", CONTROL), ("<|im_start|>", CONTROL), ("<|im_end|>", CONTROL),
              ("<|object_ref_start|>", CONTROL), ("<tool_call>", USER_DEFINED),
              ("</tool_call>", USER_DEFINED), ("<think>", USER_DEFINED),
              ("</think>", USER_DEFINED)],
    bos="<|endoftext|>", eos="<|im_end|>", template=QWEN3,
    stops=["<|im_start|>", "<|im_end|>"],
    extra_kv={"attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM})
PHI3_FAMILY = Family(
    name="tiny-phi3", arch="phi3", tokenizer="llama", pre="default",
    specials=[("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL), ("<|endoftext|>", CONTROL),
              ("<|assistant|>", CONTROL), ("<|system|>", CONTROL), ("<|end|>", CONTROL),
              ("<|user|>", CONTROL)],
    bos="<s>", eos="<|end|>", eot="<|end|>", add_bos=False, template=PHI3,
    prompt_end="<|assistant|>",
    stops=["<|end|>", "<|user|>", "<|assistant|>"],
    extra_kv={"rope.dimension_count": HEAD_DIM})
GEMMA2_FAMILY = Family(
    name="tiny-gemma2", arch="gemma2", tokenizer="llama", pre="default",
    specials=[("<pad>", CONTROL), ("<eos>", CONTROL), ("<bos>", CONTROL), ("<unk>", UNKNOWN),
              ("<start_of_turn>", CONTROL), ("<end_of_turn>", CONTROL)],
    bos="<bos>", eos="<eos>", eot="<end_of_turn>", add_bos=True, template=GEMMA2,
    stops=["<start_of_turn>", "<end_of_turn>"],
    extra_kv={"attention.key_length": HEAD_DIM, "attention.value_length": HEAD_DIM,
              "attention.sliding_window": 64, "attn_logit_softcapping": 50.0,
              "final_logit_softcapping": 30.0})
MISTRAL_FAMILY = Family(
    name="tiny-mistral", arch="llama", tokenizer="llama", pre="default",
    specials=[("<unk>", UNKNOWN), ("<s>", CONTROL), ("</s>", CONTROL), ("[INST]", CONTROL),
              ("[/INST]", CONTROL), ("[TOOL_CALLS]", CONTROL), ("[AVAILABLE_TOOLS]", CONTROL),
              ("[/AVAILABLE_TOOLS]", CONTROL), ("[TOOL_RESULTS]", CONTROL),
              ("[/TOOL_RESULTS]", CONTROL)],
    bos="<s>", eos="</s>", add_bos=True, template=MISTRAL, stops=["[INST]", "[/INST]"],
    prompt_end=" ", extra_kv={"rope.dimension_count": HEAD_DIM})
DEEPSEEK_R1_FAMILY = Family(  # the distilled Qwen 2.5 ones: qwen2 architecture
    name="tiny-deepseek-r1", arch="qwen2", tokenizer="gpt2", pre="deepseek-r1-qwen",
    specials=[("<｜begin▁of▁sentence｜>", CONTROL), ("<｜end▁of▁sentence｜>", CONTROL),
              ("<｜User｜>", USER_DEFINED), ("<｜Assistant｜>", USER_DEFINED),
              ("<think>", USER_DEFINED), ("</think>", USER_DEFINED)],
    bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>", add_bos=True,
    template=DEEPSEEK_R1, stops=["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>",
                                 "<｜User｜>", "<｜Assistant｜>"],
    prompt_end="<｜Assistant｜>")
GPT_OSS = Family(  # harmony's tokens on the llama architecture (the format is what is tested)
    name="tiny-gpt-oss", arch="llama", tokenizer="gpt2", pre="default",
    specials=[("<|startoftext|>", CONTROL), ("<|endoftext|>", CONTROL), ("<|start|>", CONTROL),
              ("<|end|>", CONTROL), ("<|message|>", CONTROL), ("<|channel|>", CONTROL),
              ("<|constrain|>", CONTROL), ("<|return|>", CONTROL), ("<|call|>", CONTROL)],
    bos="<|startoftext|>", eos="<|return|>", template=HARMONY, prompt_end="t",
    extra_kv={"rope.dimension_count": HEAD_DIM})
GRANITE = Family(  # (the llama architecture: what is Granite's here is its tokens and format)
    name="tiny-granite3", arch="llama", tokenizer="gpt2", pre="default",
    specials=[("<|end_of_text|>", CONTROL), ("<|start_of_role|>", CONTROL),
              ("<|end_of_role|>", CONTROL), ("<|tool_call|>", CONTROL)],
    bos="<|end_of_text|>", eos="<|end_of_text|>", template=GRANITE3,
    stops=["<|end_of_text|>", "<|start_of_role|>"], prompt_end="<|end_of_role|>",
    extra_kv={"rope.dimension_count": HEAD_DIM})
COMMAND_R = Family(  # (the llama architecture: Command-R's tokens and Ollama's template)
    name="tiny-command-r", arch="llama", tokenizer="gpt2", pre="default",
    specials=[("<BOS_TOKEN>", CONTROL), ("<|END_OF_TURN_TOKEN|>", CONTROL),
              ("<|START_OF_TURN_TOKEN|>", CONTROL), ("<|USER_TOKEN|>", CONTROL),
              ("<|CHATBOT_TOKEN|>", CONTROL), ("<|SYSTEM_TOKEN|>", CONTROL)],
    bos="<BOS_TOKEN>", eos="<|END_OF_TURN_TOKEN|>", add_bos=True, template=COMMAND_R_TEMPLATE,
    stops=["<|START_OF_TURN_TOKEN|>", "<|END_OF_TURN_TOKEN|>"],
    prompt_end="<|CHATBOT_TOKEN|>", extra_kv={"rope.dimension_count": HEAD_DIM})
BERT = Family(
    name="tiny-bert", arch="bert", tokenizer="bert", pre="default",
    specials=[("[PAD]", CONTROL), ("[UNK]", UNKNOWN), ("[CLS]", CONTROL), ("[SEP]", CONTROL),
              ("[MASK]", CONTROL)],
    bos="[CLS]", eos="[SEP]", add_bos=True, pooling=1,
    extra_kv={"attention.causal": False})
NOMIC_BERT = Family(
    name="tiny-nomic-embed", arch="nomic-bert", tokenizer="bert", pre="default",
    specials=BERT.specials, bos="[CLS]", eos="[SEP]", add_bos=True, pooling=1,
    extra_kv={"attention.causal": False, "rope.freq_base": 1000.0})

CHAT_FAMILIES = [LLAMA, QWEN2, QWEN3_FAMILY, PHI3_FAMILY, GEMMA2_FAMILY]
EMBED_FAMILIES = [BERT, NOMIC_BERT]

WORDS = ["the", "a", "river", "bridge", "rain", "sun", "town", "weather", "is", "in", "of",
         "and", "hello", "world", "paris", "city", "text", "short", "number", "about"]


# --- vocabularies -----------------------------------------------------------------------------


def piece_text(family: Family, text: str) -> str:
    """The vocabulary entry that decodes to `text` (a special token's text is itself)."""
    if any(text == t for t, _ in family.specials):
        return text
    if family.tokenizer == "gpt2":
        table = _bytes_to_unicode()
        return "".join(table[b] for b in text.encode())
    if family.tokenizer == "llama" and len(text.encode()) == 1 and not text.isalpha() \
            and text != " ":  # (a space is "▁", as SentencePiece writes it)
        return f"<0x{ord(text):02X}>"
    return text.replace(" ", "▁")


def _vocab(family: Family, script: list[str] = ()  # type: ignore[assignment]
           ) -> tuple[list[str], list[float], list[int], list[str]]:
    """tokens, scores, token types, merges (BPE only); each piece of `script` is a token."""
    tokens = [t for t, _ in family.specials]
    types = [k for _, k in family.specials]
    merges: list[str] = []
    if family.tokenizer == "gpt2":
        alphabet = list(_bytes_to_unicode().values())
        tokens += alphabet
        types += [NORMAL] * len(alphabet)
        # A few merges so the BPE has some (llama.cpp needs the key), on characters test text
        # never holds: plain text tokenizes byte by byte.
        for left, right in (("Ã", "¿"), ("Â", "¾")):
            merges.append(f"{left} {right}")
            tokens.append(left + right)
            types.append(NORMAL)
    elif family.tokenizer == "llama":
        tokens += [f"<0x{b:02X}>" for b in range(256)]
        types += [BYTE] * 256
        pieces = list(dict.fromkeys(["▁", *[f"▁{w}" for w in WORDS],
                                     *"abcdefghijklmnopqrstuvwxyz"]))
        tokens += pieces
        types += [NORMAL] * len(pieces)
    else:  # WordPiece: whole words carry "▁" (llama.cpp's form), continuations are bare
        chars = list("abcdefghijklmnopqrstuvwxyz0123456789.,!?'-")
        pieces = list(dict.fromkeys([f"▁{w}" for w in WORDS] + [f"▁{c}" for c in chars]
                                    + chars))
        tokens += pieces
        types += [NORMAL] * len(pieces)
    for text in [family.prompt_end, *script]:
        piece = piece_text(family, text)
        if piece not in tokens:
            tokens.append(piece)
            types.append(NORMAL)
    scores = [0.0 if k != NORMAL else -float(i) for i, k in enumerate(types)]
    return tokens, scores, types, merges


# --- tensors ----------------------------------------------------------------------------------


def _tensors(family: Family, n_vocab: int, rng: np.random.Generator,
             chain: list[tuple[int, int]], dims: Dims) -> dict[str, np.ndarray]:
    """Random weights; with a `chain` of (token, next token) pairs, a model that writes it.

    The layers' output projections (attention output, feed-forward down) are zero, so every
    block adds nothing and the last hidden state is the current token's embedding, normalised;
    the output head then maps each chained token's embedding to a large logit for its successor.
    At temperature 0 the model writes the chain from the prompt's last token (the family's
    `prompt_end`), one token per link."""
    N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_CTX_TRAIN = (  # noqa: N806 - the sizes
        dims.n_embd, dims.n_head, dims.n_head_kv, dims.n_ff, dims.n_layer, dims.n_ctx_train)
    HEAD_DIM = N_EMBD // N_HEAD  # noqa: N806

    def w(*shape: int) -> np.ndarray:  # numpy order: (rows=out, cols=in), as gguf expects
        return (rng.standard_normal(shape) * 0.05).astype(np.float32)

    def ones(n: int) -> np.ndarray:
        return np.ones(n, dtype=np.float32)

    def zeros(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.float32)

    kv_dim = N_HEAD_KV * HEAD_DIM
    out: dict[str, np.ndarray] = {"token_embd.weight": w(n_vocab, N_EMBD)}
    arch = family.arch
    if arch in ("bert", "nomic-bert"):
        out["token_types.weight"] = w(2, N_EMBD)
        if arch == "bert":
            out["position_embd.weight"] = w(N_CTX_TRAIN, N_EMBD)
        out["token_embd_norm.weight"] = ones(N_EMBD)
        out["token_embd_norm.bias"] = zeros(N_EMBD)
        for i in range(N_LAYER):
            b = f"blk.{i}."
            if arch == "bert":
                for name in ("attn_q", "attn_k", "attn_v"):
                    out[b + name + ".weight"] = w(N_EMBD, N_EMBD)
                    out[b + name + ".bias"] = zeros(N_EMBD)
                out[b + "attn_output.bias"] = zeros(N_EMBD)
                out[b + "ffn_up.bias"] = zeros(N_FF)
                out[b + "ffn_down.bias"] = zeros(N_EMBD)
            else:
                out[b + "attn_qkv.weight"] = w(3 * N_EMBD, N_EMBD)
                out[b + "ffn_gate.weight"] = w(N_FF, N_EMBD)
            out[b + "attn_output.weight"] = w(N_EMBD, N_EMBD)
            out[b + "attn_output_norm.weight"] = ones(N_EMBD)
            out[b + "attn_output_norm.bias"] = zeros(N_EMBD)
            out[b + "ffn_up.weight"] = w(N_FF, N_EMBD)
            out[b + "ffn_down.weight"] = w(N_EMBD, N_FF)
            out[b + "layer_output_norm.weight"] = ones(N_EMBD)
            out[b + "layer_output_norm.bias"] = zeros(N_EMBD)
        return out
    out["output_norm.weight"] = ones(N_EMBD)
    embd = out["token_embd.weight"]
    if arch != "gemma2":  # (Gemma's output head is its token embedding: see below)
        head = w(n_vocab, N_EMBD)
        for token, successor in chain:
            head[successor] += 10.0 * embd[token] / np.linalg.norm(embd[token])
        out["output.weight"] = head
    for i in range(N_LAYER):
        b = f"blk.{i}."
        out[b + "attn_norm.weight"] = ones(N_EMBD)
        if arch == "phi3":
            out[b + "attn_qkv.weight"] = w(N_EMBD + 2 * kv_dim, N_EMBD)
            out[b + "ffn_up.weight"] = w(2 * N_FF, N_EMBD)
        else:
            out[b + "attn_q.weight"] = w(N_HEAD * HEAD_DIM, N_EMBD)
            out[b + "attn_k.weight"] = w(kv_dim, N_EMBD)
            out[b + "attn_v.weight"] = w(kv_dim, N_EMBD)
            out[b + "ffn_gate.weight"] = w(N_FF, N_EMBD)
            out[b + "ffn_up.weight"] = w(N_FF, N_EMBD)
        if arch == "qwen2":
            out[b + "attn_q.bias"] = zeros(N_HEAD * HEAD_DIM)
            out[b + "attn_k.bias"] = zeros(kv_dim)
            out[b + "attn_v.bias"] = zeros(kv_dim)
        if arch == "qwen3":
            out[b + "attn_q_norm.weight"] = ones(HEAD_DIM)
            out[b + "attn_k_norm.weight"] = ones(HEAD_DIM)
        out[b + "attn_output.weight"] = w(N_EMBD, N_HEAD * HEAD_DIM)
        out[b + "ffn_norm.weight"] = ones(N_EMBD)
        out[b + "ffn_down.weight"] = w(N_EMBD, N_FF)
        if arch == "gemma2":
            out[b + "post_attention_norm.weight"] = ones(N_EMBD)
            out[b + "post_ffw_norm.weight"] = ones(N_EMBD)
        if chain:
            out[b + "attn_output.weight"][:] = 0
            out[b + "ffn_down.weight"][:] = 0
    if arch == "gemma2" and chain:
        # Tied output head: the first block's feed-forward turns each chained token's
        # embedding into its successor's (one hidden unit per link, matched on direction);
        # the post-feed-forward norm scales that far above the embedding it is added to.
        if len(chain) > N_FF:
            raise ValueError(f"a Gemma script has at most {N_FF - 1} pieces")
        gate, up, down = (np.zeros((N_FF, N_EMBD), np.float32),
                          np.zeros((N_FF, N_EMBD), np.float32),
                          np.zeros((N_EMBD, N_FF), np.float32))
        for k, (token, successor) in enumerate(chain):
            gate[k] = up[k] = embd[token] / np.linalg.norm(embd[token])
            down[:, k] = embd[successor] / np.linalg.norm(embd[successor])
        out.update({"blk.0.ffn_gate.weight": gate, "blk.0.ffn_up.weight": up,
                    "blk.0.ffn_down.weight": down,
                    "blk.0.post_ffw_norm.weight": np.full(N_EMBD, 10.0, np.float32)})
    return out


def write_gguf(family: Family, path: Path, seed: int = 0, script: list[str] | None = None,
               dims: Dims = Dims()) -> Path:
    """The family's tiny model at `path`. With a `script` (pieces of text and special tokens'
    texts, all different), the model answers any prompt that ends in a newline with those
    pieces, one token each, then its end-of-generation token (Phi-3: any prompt ending with
    `<|assistant|>`, as its template's do)."""
    import gguf

    N_EMBD, N_HEAD, N_HEAD_KV, N_FF, N_LAYER, N_CTX_TRAIN = (  # noqa: N806 - the sizes
        dims.n_embd, dims.n_head, dims.n_head_kv, dims.n_ff, dims.n_layer, dims.n_ctx_train)
    tokens, scores, types, merges = _vocab(family, script or [])
    chain: list[tuple[int, int]] = []
    if script:
        ids = [tokens.index(piece_text(family, t)) for t in [family.prompt_end, *script]]
        ids.append(tokens.index(family.eot or family.eos))
        if len(set(ids[:-1])) != len(ids) - 1:
            raise ValueError("a script's pieces must all differ (and from the prompt's end)")
        chain = list(zip(ids, ids[1:], strict=False))
    writer = gguf.GGUFWriter(str(path), family.arch)
    arch = family.arch
    writer.add_name(family.name)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    writer.add_uint32(f"{arch}.context_length", N_CTX_TRAIN)
    writer.add_uint32(f"{arch}.embedding_length", N_EMBD)
    writer.add_uint32(f"{arch}.block_count", N_LAYER)
    writer.add_uint32(f"{arch}.feed_forward_length", N_FF)
    writer.add_uint32(f"{arch}.attention.head_count", N_HEAD)
    if family.tokenizer == "bert":
        writer.add_float32(f"{arch}.attention.layer_norm_epsilon", 1e-12)
        writer.add_uint32(f"{arch}.pooling_type", family.pooling)
        writer.add_uint32("tokenizer.ggml.token_type_count", 2)
    else:
        writer.add_uint32(f"{arch}.attention.head_count_kv", N_HEAD_KV)
        writer.add_float32(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)
        writer.add_float32(f"{arch}.rope.freq_base", 10000.0)
    for key, value in family.extra_kv.items():
        full = f"{arch}.{key}"
        if isinstance(value, bool):
            writer.add_bool(full, value)
        elif isinstance(value, int):
            writer.add_uint32(full, value)
        else:
            writer.add_float32(full, float(value))  # type: ignore[arg-type]
    writer.add_tokenizer_model(family.tokenizer)
    writer.add_tokenizer_pre(family.pre)
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    if merges:
        writer.add_token_merges(merges)
    if family.bos is not None:
        writer.add_bos_token_id(tokens.index(family.bos))
    writer.add_eos_token_id(tokens.index(family.eos))
    if family.eot is not None:
        writer.add_uint32("tokenizer.ggml.eot_token_id", tokens.index(family.eot))
    writer.add_add_bos_token(family.add_bos)
    if family.tokenizer == "bert":
        writer.add_add_eos_token(True)
        writer.add_sep_token_id(tokens.index("[SEP]"))
        writer.add_pad_token_id(tokens.index("[PAD]"))
        writer.add_unk_token_id(tokens.index("[UNK]"))
        writer.add_mask_token_id(tokens.index("[MASK]"))
    elif "<unk>" in tokens:
        writer.add_unk_token_id(tokens.index("<unk>"))
    rng = np.random.default_rng(seed)
    for name, array in _tensors(family, len(tokens), rng, chain, dims).items():
        writer.add_tensor(name, array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def build_all(directory: Path, families: list[Family] | None = None) -> dict[str, Path]:
    """Every family's GGUF in `directory`, by model name."""
    directory.mkdir(parents=True, exist_ok=True)
    return {f.name: write_gguf(f, directory / f"{f.name}.gguf")
            for f in (families or CHAT_FAMILIES + EMBED_FAMILIES)}


def modelfile_json(family: Family, path: Path) -> str:
    return json.dumps({"model": family.name, "modelfile": family.modelfile(path)})


def token_id(family: Family, text: str, script: list[str] | None = None) -> int:
    """The id of the vocabulary entry that decodes to `text` in the family's tiny model."""
    return _vocab(family, script or [])[0].index(piece_text(family, text))
