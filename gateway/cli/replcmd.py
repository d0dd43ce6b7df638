"""The REPL's input language as pure functions: lines in, commands out.

`LineAssembler` joins `\"\"\"`-quoted multi-line input; `parse_command` turns one complete input
into a command object; `parse_lines` does both over a list of lines (handy for tests). Nothing here
talks to the server or the terminal; `repl.py` carries the commands out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

QUOTE = '"""'

# --------------------------------------------------------------------------- commands


@dataclass(frozen=True)
class Message:
    """Text to send to the model as a user message."""

    text: str


@dataclass(frozen=True)
class Exit:
    pass


@dataclass(frozen=True)
class Print:
    """Only print something: help, usage, or an error about the command itself."""

    text: str


@dataclass(frozen=True)
class SetParameter:
    name: str
    value: Any
    message: str


@dataclass(frozen=True)
class SetSystem:
    text: str


@dataclass(frozen=True)
class SetOption:
    """A session switch: verbose, format, wordwrap, history or think."""

    name: str
    value: Any
    message: str


@dataclass(frozen=True)
class Show:
    what: str  # info | license | modelfile | parameters | system | template


@dataclass(frozen=True)
class Clear:
    pass


@dataclass(frozen=True)
class Load:
    model: str


@dataclass(frozen=True)
class ListModels:
    pass


Command = (
    Message | Exit | Print | SetParameter | SetSystem | SetOption | Show | Clear | Load | ListModels
)

# --------------------------------------------------------------------------- help texts

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /clear          Clear session context
  /list           List available models
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""

HELP_SET = """Available Commands:
  /set parameter ...     Set a parameter
  /set system <string>   Set system message
  /set history           Enable history
  /set nohistory         Disable history
  /set wordwrap          Enable wordwrap
  /set nowordwrap        Disable wordwrap
  /set format json       Enable JSON mode
  /set noformat          Disable formatting
  /set verbose           Show LLM stats
  /set quiet             Disable LLM stats
  /set think             Enable thinking
  /set nothink           Disable thinking
"""

HELP_SHOW = """Available Commands:
  /show info         Show details for this model
  /show license      Show model license
  /show modelfile    Show Modelfile for this model
  /show parameters   Show parameters for this model
  /show system       Show system message
  /show template     Show prompt template
"""

HELP_SHORTCUTS = """Available keyboard shortcuts:
  Ctrl + a            Move to the beginning of the line (Home)
  Ctrl + e            Move to the end of the line (End)
  Alt + b             Move back (left) one word
  Alt + f             Move forward (right) one word
  Ctrl + k            Delete the sentence after the cursor
  Ctrl + u            Delete the sentence before the cursor
  Ctrl + w            Delete the word before the cursor

  Ctrl + l            Clear the screen
  Ctrl + c            Stop the model from responding
  Ctrl + d            Exit corral (/bye)
"""

HELP_PARAMETERS = """Available Parameters:
  /set parameter seed <int>             Random number seed
  /set parameter num_predict <int>      Max number of tokens to predict
  /set parameter top_k <int>            Pick from top k num of tokens
  /set parameter top_p <float>          Pick token based on sum of probabilities
  /set parameter min_p <float>          Pick token based on top token probability * min_p
  /set parameter num_ctx <int>          Set the context size
  /set parameter temperature <float>    Set creativity level
  /set parameter repeat_penalty <float> How strongly to penalize repetitions
  /set parameter repeat_last_n <int>    Set how far back to look for repetitions
  /set parameter num_gpu <int>          The number of layers to send to the GPU
  /set parameter stop <string> <string> ...   Set the stop parameters
"""

_HELP_TOPICS = {"": HELP, "set": HELP_SET, "show": HELP_SHOW, "shortcuts": HELP_SHORTCUTS}

# --------------------------------------------------------------------------- parameters

# The option types of Ollama's `options` object (api/types.go); the REPL sends typed values.
INT_OPTIONS = frozenset(
    {"num_keep", "seed", "num_predict", "top_k", "repeat_last_n", "num_ctx", "num_batch",
     "num_gpu", "main_gpu", "num_thread", "draft_num_predict"}
)
FLOAT_OPTIONS = frozenset(
    {"top_p", "min_p", "typical_p", "temperature", "repeat_penalty", "presence_penalty",
     "frequency_penalty"}
)
BOOL_OPTIONS = frozenset({"use_mmap"})
LIST_OPTIONS = frozenset({"stop"})


def parse_parameter(name: str, values: list[str]) -> Any:
    """Type a `/set parameter` value as the option wants; ValueError says what is wrong."""
    if name in LIST_OPTIONS:
        return list(values)
    if not values:
        raise ValueError(f"missing value for parameter '{name}'")
    raw = values[0]
    if name in INT_OPTIONS:
        try:
            return int(raw)
        except ValueError:
            # Ollama's option decoding truncates numbers given for int options.
            try:
                return int(float(raw))
            except ValueError:
                raise ValueError(f"invalid int value [{raw}]") from None
    if name in FLOAT_OPTIONS:
        try:
            return float(raw)
        except ValueError:
            raise ValueError(f"invalid float value [{raw}]") from None
    if name in BOOL_OPTIONS:
        lowered = raw.lower()
        if lowered in ("1", "t", "true"):
            return True
        if lowered in ("0", "f", "false"):
            return False
        raise ValueError(f"invalid bool value [{raw}]")
    raise ValueError(f"unknown parameter '{name}'")


# --------------------------------------------------------------------------- multi-line input


class LineAssembler:
    """Joins a `\"\"\"`-quoted block of lines into one input.

    A block opens with a line starting with `\"\"\"` (or `/set system \"\"\"`) and closes with a
    line ending in `\"\"\"`; the lines are joined with newlines, as Ollama does.
    """

    def __init__(self) -> None:
        self._parts: list[str] | None = None
        self._prefix = ""
        # Whether the last input came from a quoted block: such text is always a message, even
        # when it starts with "/".
        self.last_quoted = False

    @property
    def pending(self) -> bool:
        """True while inside a block (the REPL then shows the `... ` prompt)."""
        return self._parts is not None

    def reset(self) -> None:
        self._parts = None
        self._prefix = ""

    def feed(self, line: str) -> str | None:
        """Returns the complete input once there is one, else None (more lines needed)."""
        line = line.rstrip("\r\n")
        if self._parts is not None:
            if line.endswith(QUOTE):
                self._parts.append(line[: -len(QUOTE)])
                text = self._prefix + "\n".join(self._parts)
                self.last_quoted = not self._prefix
                self.reset()
                return text
            self._parts.append(line)
            return None
        prefix, rest = "", line
        stripped = line.lstrip()
        if stripped.startswith("/set system "):
            body = stripped[len("/set system ") :].lstrip()
            if body.startswith(QUOTE):
                prefix, rest = "/set system ", body
        elif stripped.startswith(QUOTE):
            rest = stripped
        self.last_quoted = False
        if not rest.startswith(QUOTE):
            return line
        rest = rest[len(QUOTE) :]
        if len(rest) >= len(QUOTE) and rest.endswith(QUOTE):  # opened and closed on one line
            self.last_quoted = not prefix
            return prefix + rest[: -len(QUOTE)]
        self._parts = [rest]
        self._prefix = prefix
        return None


# --------------------------------------------------------------------------- commands


def _parse_set(args: list[str], text: str) -> Command:
    if len(args) < 2:
        return Print(HELP_SET)
    what = args[1]
    if what == "parameter":
        if len(args) < 4:
            return Print(HELP_PARAMETERS)
        name, values = args[2], args[3:]
        try:
            value = parse_parameter(name, values)
        except ValueError as exc:
            return Print(f'Couldn\'t set parameter: "{exc}"\n')
        return SetParameter(name, value, f"Set parameter '{name}' to '{', '.join(values)}'\n")
    if what == "system":
        # Keep the system text exactly as typed (newlines included), minus the command word.
        body = text.lstrip()[len("/set") :].lstrip()[len("system") :]
        if not body.strip():
            return Print(HELP_SET)
        return SetSystem(body.strip())
    simple: dict[str, tuple[str, Any, str]] = {
        "verbose": ("verbose", True, "Set 'verbose' mode.\n"),
        "quiet": ("verbose", False, "Set 'quiet' mode.\n"),
        "noformat": ("format", None, "Disabled format.\n"),
        "wordwrap": ("wordwrap", True, "Set 'wordwrap' mode.\n"),
        "nowordwrap": ("wordwrap", False, "Set 'nowordwrap' mode.\n"),
        "history": ("history", True, "Set 'history' mode.\n"),
        "nohistory": ("history", False, "Set 'nohistory' mode.\n"),
        "nothink": ("think", False, "Set 'nothink' mode.\n"),
    }
    if what in simple:
        return SetOption(*simple[what])
    if what == "format":
        if len(args) < 3 or args[2] != "json":
            return Print("Invalid or missing format. For 'json' mode use '/set format json'\n")
        return SetOption("format", "json", "Set format to 'json' mode.\n")
    if what == "think":
        if len(args) < 3:
            return SetOption("think", True, "Set 'think' mode.\n")
        level = args[2].lower()
        if level not in ("low", "medium", "high", "max"):
            return Print(f"Invalid think level '{args[2]}'. Use low, medium, high or max.\n")
        return SetOption("think", level, f"Set 'think' mode to '{level}'.\n")
    return Print(f"Unknown command '/set {what}'. Type /? for help\n")


def parse_command(text: str, quoted: bool = False) -> Command | None:
    """One complete input to a command; None for blank input (nothing to do).

    `quoted` marks text from a \"\"\" block, which is always a message.
    """
    if not text.strip():
        return None
    if quoted or not text.lstrip().startswith("/"):
        return Message(text)
    args = text.split()
    cmd = args[0]
    if cmd in ("/bye", "/exit"):
        return Exit()
    if cmd in ("/?", "/help"):
        topic = args[1] if len(args) > 1 else ""
        if topic in _HELP_TOPICS:
            return Print(_HELP_TOPICS[topic])
        return Print(f"Unknown command '{cmd} {topic}'. Type /? for help\n")
    if cmd == "/set":
        return _parse_set(args, text)
    if cmd == "/show":
        if len(args) < 2:
            return Print(HELP_SHOW)
        what = args[1]
        if what in ("info", "license", "modelfile", "parameters", "system", "template"):
            return Show(what)
        return Print(f"Unknown command '/show {what}'. Type /? for help\n")
    if cmd == "/clear":
        return Clear()
    if cmd == "/load":
        if len(args) != 2:
            return Print("Usage:\n  /load <modelname>\n")
        return Load(args[1])
    if cmd == "/list":
        return ListModels()
    return Print(f"Unknown command '{cmd}'. Type /? for help\n")


def parse_lines(lines: Iterable[str]) -> list[Command]:
    """Every command a sequence of typed lines produces (multi-line blocks joined)."""
    assembler = LineAssembler()
    commands: list[Command] = []
    for line in lines:
        text = assembler.feed(line)
        if text is None:
            continue
        cmd = parse_command(text, assembler.last_quoted)
        if cmd is not None:
            commands.append(cmd)
    return commands
