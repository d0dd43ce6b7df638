"""Images in requests, before they go to a runner: decoded from base64 (the native API's
`images`) or from data URLs (OpenAI's `image_url`), checked against the limits, and tagged for
Go templates as Ollama tags them.

The gateway never fetches anything: an http(s) URL is a 400 (Ollama's words). Whether bytes are
really an image is the runner's to say (libmtmd decodes them); it names the image that is not.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from shared.config import Settings
from shared.errors import BadRequest

NO_IMAGES = "this model is missing data required for image input"  # Ollama's runner's words
URL_REFUSED = "image URLs are not currently supported, please use base64 encoded data instead"
_DATA_PREFIXES = tuple(f"data:image/{kind};base64," for kind in ("jpeg", "jpg", "png", "webp",
                                                                 "gif", "bmp"))


def decode_base64(value: Any, where: str) -> bytes:
    """One entry of an `images` list: base64 text (bytes pass as they are: already decoded)."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise BadRequest(f"invalid image input: {where} must be a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"invalid image input: {where} is not valid base64") from None


def from_url(url: Any, where: str) -> bytes:
    """An OpenAI `image_url`: a base64 data URL (or bare base64 after "data:;base64,")."""
    if not isinstance(url, str):
        raise BadRequest(f"invalid image input: {where} needs a url")
    if url.startswith(("http://", "https://")):
        raise BadRequest(URL_REFUSED)
    if url.startswith("data:;base64,"):
        return decode_base64(url.removeprefix("data:;base64,"), where)
    for prefix in _DATA_PREFIXES:
        if url.startswith(prefix):
            return decode_base64(url.removeprefix(prefix), where)
    raise BadRequest("invalid image input")


_MEDIA_TYPES = ("image/jpeg", "image/png", "image/gif", "image/webp")


def from_anthropic_source(source: Any, where: str) -> bytes:
    """An Anthropic image block's `source`: base64 data with its media type; a `url` source is
    refused as an OpenAI http(s) URL is (no outbound fetches), a `file` source too (no Files API
    here)."""
    kind = source.get("type") if isinstance(source, dict) else None
    if kind == "url":
        raise BadRequest(URL_REFUSED)
    if kind != "base64":
        raise BadRequest(f"{where}.source.type: must be \"base64\" (got {kind!r}): images "
                         "are sent as base64 data here")
    if source.get("media_type") not in _MEDIA_TYPES:
        raise BadRequest(f"{where}.source.media_type: must be one of {', '.join(_MEDIA_TYPES)}")
    return decode_base64(source.get("data"), f"{where}.source.data")


def check_messages(messages: list[dict[str, Any]]) -> None:
    """Each message's `images` decoded in place (to bytes)."""
    for i, message in enumerate(messages):
        raw = message.get("images")
        if not raw:
            message.pop("images", None)
            continue
        if not isinstance(raw, list):
            raise BadRequest(f"invalid image input: messages[{i}].images must be an array")
        message["images"] = [decode_base64(v, f"messages[{i}].images[{j}]")
                             for j, v in enumerate(raw)]


def count(messages: list[dict[str, Any]] | None, images: list[bytes] | None) -> int:
    return len(images or ()) + sum(len(m.get("images") or ()) for m in messages or ())


def check_limits(messages: list[dict[str, Any]] | None, images: list[bytes] | None,
                 settings: Settings) -> None:
    """CORRAL_MAX_IMAGES per request and CORRAL_MAX_IMAGE_BYTES per image: a clear 400."""
    n = count(messages, images)
    if n > settings.max_images:
        raise BadRequest(f"too many images: {n} in one request, at most {settings.max_images} "
                         "(CORRAL_MAX_IMAGES)")
    every = [*(images or ()), *(d for m in messages or () for d in m.get("images") or ())]
    for k, data in enumerate(every):
        if len(data) > settings.max_image_bytes:
            raise BadRequest(f"image {k + 1} is too large: {len(data)} bytes, at most "
                             f"{settings.max_image_bytes} (CORRAL_MAX_IMAGE_BYTES)")


def tag_messages(messages: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[bytes]]:
    """For a Go template: each message's images as `[img-N]` tags before its content (or in
    place of its `[img]` placeholders), numbered over the whole chat, as Ollama writes them;
    the images in that order."""
    tagged: list[dict[str, Any]] = []
    images: list[bytes] = []
    for message in messages:
        data = message.get("images")
        if not data:
            tagged.append(message)
            continue
        content = str(message.get("content") or "")
        prefix = ""
        for item in data:
            tag = f"[img-{len(images)}]"
            images.append(item)
            if "[img]" in content:
                content = content.replace("[img]", tag, 1)
            else:
                prefix += tag
        tagged.append({**{k: v for k, v in message.items() if k != "images"},
                       "content": prefix + content})
    return tagged, images


def tag_prompt(prompt: str, images: list[bytes]) -> str:
    """A raw prompt's images: read where it says [img-N]; a prompt naming none reads them all
    first."""
    if not images or "[img-" in prompt:
        return prompt
    return "".join(f"[img-{i}]" for i in range(len(images))) + prompt
