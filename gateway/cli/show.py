"""Rendering of `corral show MODEL` (and the REPL's `/show info`) from a /api/show response.

Pure functions: response dict in, text out. The layout follows `ollama show`: an indented
section title, then a table whose first column is empty (which yields the 4-space indent).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from gateway.cli.format import go_g, go_value, human_number, render_table

# Long text sections (system prompt, license) get wider cells before wrapping.
_WIDE_SECTIONS = ("System", "License")
_WIDE_COL = 100


def _section(title: str, rows: Sequence[Sequence[str]]) -> str:
    width = _WIDE_COL if title in _WIDE_SECTIONS else 30
    return f"  {title}\n" + render_table(rows, col_width=width) + "\n"


def _number(v: Any) -> str:
    # Context and embedding lengths are integers sent as JSON numbers; print them plainly.
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else repr(v)
    return str(v)


def _head(text: str, n: int) -> list[list[str]]:
    """The first n non-blank lines of a long text, then "..." if there were more."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    rows = [["", line] for line in lines[:n]]
    if len(lines) > n:
        rows.append(["", "..."])
    return rows


def _metadata_value(v: Any) -> str:
    """One model_info value for `show -v`; long arrays are cut to what fits in ~10 columns."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return v
    if isinstance(v, int | float):
        return go_g(float(v))
    if isinstance(v, list):
        shown, width = 0, 1
        for i, item in enumerate(v):
            w = len(go_value(item)) + (2 if i else 0)
            if width + w > 10 and i > 0:
                break
            width += w
            shown += 1
        if shown < len(v):
            head = " ".join(go_value(i) for i in v[:shown])
            return f"[{head} ...+{len(v) - shown} more]"
        return go_value(v)
    if v is None:
        return "<nil>"
    return type(v).__name__


def model_rows(resp: Mapping[str, Any]) -> list[list[str]]:
    details: Mapping[str, Any] = resp.get("details") or {}
    info: Mapping[str, Any] = resp.get("model_info") or {}
    rows: list[list[str]] = []
    if resp.get("remote_host"):
        rows.append(["", "remote model", str(resp.get("remote_model") or "")])
        rows.append(["", "remote URL", str(resp["remote_host"])])
    arch = info.get("general.architecture")
    if isinstance(arch, str) and arch:
        rows.append(["", "architecture", arch])
        params = details.get("parameter_size") or ""
        if not params and isinstance(info.get("general.parameter_count"), int | float):
            params = human_number(info["general.parameter_count"])
        rows.append(["", "parameters", str(params)])
        if (ctx := info.get(f"{arch}.context_length")) is not None:
            rows.append(["", "context length", _number(ctx)])
        if (emb := info.get(f"{arch}.embedding_length")) is not None:
            rows.append(["", "embedding length", _number(emb)])
    else:
        rows.append(["", "architecture", str(details.get("family") or "")])
        rows.append(["", "parameters", str(details.get("parameter_size") or "")])
    rows.append(["", "quantization", str(details.get("quantization_level") or "")])
    if resp.get("requires"):
        rows.append(["", "requires", str(resp["requires"])])
    return rows


def projector_rows(proj: Mapping[str, Any]) -> list[list[str]]:
    arch = str(proj.get("general.architecture") or "")
    rows = [["", "architecture", arch]]
    if isinstance(proj.get("general.parameter_count"), int | float):
        rows.append(["", "parameters", human_number(proj["general.parameter_count"])])
    if (emb := proj.get(f"{arch}.vision.embedding_length")) is not None:
        rows.append(["", "embedding length", _number(emb)])
    if (dim := proj.get(f"{arch}.vision.projection_dim")) is not None:
        rows.append(["", "dimensions", _number(dim)])
    return rows


def show_info(resp: Mapping[str, Any], verbose: bool = False) -> str:
    """The default `show` output: Model, Capabilities, Projector, Parameters, System, License."""
    parts = [_section("Model", model_rows(resp))]
    if caps := resp.get("capabilities"):
        parts.append(_section("Capabilities", [["", str(c)] for c in caps]))
    if proj := resp.get("projector_info"):
        parts.append(_section("Projector", projector_rows(proj)))
    if params := resp.get("parameters"):
        rows = [["", *line.split()] for line in str(params).splitlines() if line.strip()]
        parts.append(_section("Parameters", rows))
    if system := resp.get("system"):
        parts.append(_section("System", _head(str(system), 2)))
    if lic := resp.get("license"):
        parts.append(_section("License", _head(str(lic), 2)))
    if verbose:
        info: Mapping[str, Any] = resp.get("model_info") or {}
        meta = [["", k, _metadata_value(info[k])] for k in sorted(info)]
        parts.append(_section("Metadata", meta))
        tensors = resp.get("tensors") or []
        if tensors:
            rows = [
                ["", str(t.get("name", "")), str(t.get("type", "")), go_value(t.get("shape", []))]
                for t in tensors
            ]
            parts.append(_section("Tensors", rows))
    return "".join(parts)


# How each single-field flag of `show` prints; Ollama adds a newline to some and not others.
SHOW_FIELDS: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "license": lambda r: str(r.get("license") or "") + "\n",
    "modelfile": lambda r: str(r.get("modelfile") or "") + "\n",
    "parameters": lambda r: str(r.get("parameters") or "") + "\n",
    "system": lambda r: str(r.get("system") or ""),
    "template": lambda r: str(r.get("template") or ""),
}
