"""Keeping messages under the homeserver's event size limit (64 KiB of canonical JSON): long
Markdown is cut into several messages, long notices are clipped (pure, no I/O).

Sizes are measured as the homeserver measures them: UTF-8 *after JSON escaping*. A control
character is one byte of text but six in the event (``\u0001``), so 16 kB of them in a tool
result would make a 96 kB event."""

from __future__ import annotations

import json
import re
from typing import Any

# Plain Markdown per message. Its HTML is rarely more than twice as long, and an edit carries
# the new content once plus a short fallback, so an event stays well under 64 KiB.
PIECE_BYTES = 16_000
# Above this an event is sent without its HTML (the plain text alone always fits).
EVENT_BYTES = 60_000
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")


def utf8_len(text: str) -> int:
    return len(text.encode(errors="surrogatepass"))


def escaped_len(text: str) -> int:
    """Bytes ``text`` takes inside a JSON event (UTF-8, quotes and control characters escaped,
    as canonical JSON does)."""
    return utf8_len(json.dumps(text, ensure_ascii=False)) - 2


def _char_bytes(c: str) -> int:
    if c in '"\\\b\f\n\r\t':
        return 2
    return 6 if ord(c) < 0x20 else utf8_len(c)


def _prefix_within(text: str, limit: int) -> str:
    """The longest prefix of ``text`` of at most ``limit`` escaped bytes (whole characters)."""
    # Escaping never shrinks text: the raw UTF-8 prefix is an upper bound, usually the answer.
    head = text.encode(errors="surrogatepass")[:limit].decode(errors="ignore")
    if escaped_len(head) <= limit:
        return head
    total = 0
    for index, c in enumerate(head):
        total += _char_bytes(c)
        if total > limit:
            return head[:index]
    return head


def _open_fence(text: str) -> tuple[str, str] | None:
    """(opening line, fence marker) of a code fence still open at the end of ``text``."""
    opening: tuple[str, str] | None = None
    for line in text.split("\n"):
        m = _FENCE.match(line)
        if m is None:
            continue
        marker = m.group(1)
        if opening is None:
            opening = (line.strip(), marker)
        elif (
            marker[0] == opening[1][0]
            and len(marker) >= len(opening[1])
            and (line.strip() == marker)
        ):
            opening = None
    return opening


def split_markdown(text: str, limit: int = PIECE_BYTES) -> list[str]:
    """``text`` in pieces of at most ``limit`` escaped bytes, each to be a message of its own:
    cut at the last paragraph break that fits (in the second half of the piece), else the
    last line break, else between two characters. A code fence open at a cut is closed
    there and opened again in the next piece, so every piece renders on its own."""
    pieces: list[str] = []
    rest = text.strip()
    while escaped_len(rest) > limit:
        head = _prefix_within(rest, limit - 64)  # room for a closing fence
        cut = head.rfind("\n\n")
        if cut < len(head) // 2:  # no paragraph break in the second half: a line break
            cut = head.rfind("\n")
        if cut <= 0:
            cut = len(head)
        piece, rest = rest[:cut].rstrip(), rest[cut:].lstrip("\n")
        fence = _open_fence(piece)
        if fence is not None:
            opening, marker = fence
            piece, rest = f"{piece}\n{marker}", f"{opening}\n{rest}"
        pieces.append(piece)
    if rest:
        pieces.append(rest)
    return pieces


def clip(text: str, limit: int = PIECE_BYTES) -> str:
    """``text`` cut to about ``limit`` escaped bytes, saying how much was left out."""
    if escaped_len(text) <= limit:
        return text
    head = _prefix_within(text, limit)
    return f"{head}\n… ({len(text) - len(head)} more characters not shown)"


def event_bytes(content: dict[str, Any]) -> int:
    """About the size the homeserver measures (UTF-8 JSON, without the event's envelope)."""
    return utf8_len(json.dumps(content, ensure_ascii=False, separators=(",", ":")))


def without_html(content: dict[str, Any]) -> dict[str, Any]:
    """The content with its HTML (and that of an edit's new content) left out."""
    plain = {k: v for k, v in content.items() if k not in ("format", "formatted_body")}
    if isinstance(plain.get("m.new_content"), dict):
        plain["m.new_content"] = without_html(plain["m.new_content"])
    return plain
