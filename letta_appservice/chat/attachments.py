"""Images and files in what an agent says. Letta 0.16.8 answers in text only (assistant
content is text parts; a sandbox tool returns a string), so an agent's picture or file arrives
as a Markdown image or link: a ``data:`` URI (what a tool can return) or a URL on the Letta
server itself, which people in Matrix cannot open. Those are taken out of the text, which keeps
a short mention (``[image: chart]``), and become attachments the bridge uploads to Matrix
(chat/uploads.py). Other links stay as written (pure)."""

from __future__ import annotations

import base64
import binascii
import functools
import mimetypes
import re
from pathlib import PurePosixPath
from urllib.parse import unquote, unquote_to_bytes, urlsplit

import attrs

from ..letta.downloads import on_server

# Code is shown as written: a data: URI in a code block is an example, not an attachment.
_CODE = re.compile(r"```.*?(?:```|\Z)|`[^`\n]*`", re.S)
_LINK = re.compile(r'(!?)\[([^\]\n]{0,300})\]\(\s*<?([^\s()<>]+)>?(?:\s+"[^"\n]*")?\s*\)')
# A link still being streamed (no closing parenthesis yet): hidden until it is complete.
_UNFINISHED = re.compile(r"(!?)\[([^\]\n]{0,300})\]\(\s*<?([^\s()<>]*)\Z")
_DATA = re.compile(r"data:[\w.+-]+/[\w.+-]+(?:;[\w.+-]+=[\w.+-]+)*(?:;base64)?,[\w+/=%.~!$&'*-]*")
_UNSAFE_NAME = re.compile(r"[^\w.\- ]+")


@attrs.frozen
class Ref:
    """One attachment in the text: where it is and what the agent called it."""

    source: str  # a data: URI or a URL on the Letta server
    label: str
    image: bool  # written as an image (``![…](…)``) or a data: URI of an image type


def _ours(url: str, letta_url: str) -> bool:
    if url[:5].lower() == "data:":
        return True
    return bool(letta_url) and on_server(letta_url, url)


def _label(text: str) -> str:
    return " ".join(text.replace("[", "(").replace("]", ")").split())[:100]


def _mention(ref: Ref) -> str:
    return f"[{'image' if ref.image else 'file'}: {ref.label}]"


def _named(url: str, label: str, image: bool) -> Ref:
    if not label and not url.lower().startswith("data:"):
        label = unquote(PurePosixPath(urlsplit(url).path).name)
    image = image or data_type(url).startswith("image/")
    return Ref(url, _label(label) or ("image" if image else "file"), image)


@functools.lru_cache(maxsize=8)
def _bare(letta_url: str) -> re.Pattern[str]:
    """Bare URLs on the Letta server (linkified otherwise) and bare data: URIs."""
    # Like linkify: a URL does not end in punctuation; the server's URL ends at a "/".
    path = r"(?:/(?:[^\s<>()\[\]`]*[^\s<>()\[\]`.,;:!?'\"])?)?(?![\w:@-]|\.[\w-])"
    letta = rf"{re.escape(letta_url)}{path}|" if letta_url else ""
    return re.compile(rf"{letta}{_DATA.pattern}", re.I)


def _outside_code(text: str, letta_url: str, refs: list[Ref]) -> str:
    def link(m: re.Match[str]) -> str:
        if not _ours(m.group(3), letta_url):
            return m.group(0)
        refs.append(_named(m.group(3), m.group(2), bool(m.group(1))))
        return _mention(refs[-1])

    def unfinished(m: re.Match[str]) -> str:
        target = m.group(3).lower()
        growing = ("data:", letta_url.lower() + "/") if letta_url else ("data:",)
        if not (_ours(target, letta_url) or any(o.startswith(target) for o in growing)):
            return m.group(0)
        return _mention(Ref("", _label(m.group(2)) or "…", bool(m.group(1))))

    def bare(m: re.Match[str]) -> str:
        refs.append(_named(m.group(0), "", False))
        return _mention(refs[-1])

    text = _LINK.sub(link, text)
    text = _UNFINISHED.sub(unfinished, text)
    return _bare(letta_url).sub(bare, text)


def extract(text: str, letta_url: str) -> tuple[str, list[Ref]]:
    """``text`` with its attachments replaced by mentions, and the attachments in order.
    ``letta_url``: the Letta server's base URL (links there are attachments)."""
    letta_url = letta_url.rstrip("/")
    if "data:" not in text.lower() and (not letta_url or letta_url.lower() not in text.lower()):
        return text, []  # the common case, without the regular expressions
    refs: list[Ref] = []
    out, start = [], 0
    for code in _CODE.finditer(text):
        out.append(_outside_code(text[start : code.start()], letta_url, refs))
        out.append(code.group(0))
        start = code.end()
    out.append(_outside_code(text[start:], letta_url, refs))
    return "".join(out), refs


def data_type(uri: str) -> str:
    """The media type a data: URI declares ('' for anything else)."""
    if uri[:5].lower() != "data:":
        return ""
    return uri[5:].split(",", 1)[0].split(";", 1)[0].strip().lower() or "text/plain"


def decode_data(uri: str) -> bytes:
    """The bytes of a data: URI; ValueError when it is malformed (e.g. cut short)."""
    head, sep, payload = uri.partition(",")
    if not sep or head[:5].lower() != "data:":
        raise ValueError("not a data: URI")
    if head.lower().endswith(";base64"):
        try:
            return base64.b64decode(re.sub(r"\s+", "", unquote(payload)), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"bad base64: {exc}") from exc
    return unquote_to_bytes(payload)


def filename(label: str, mimetype: str) -> str:
    """A file name for the attachment: its label made safe, with an extension of its type."""
    name = _UNSAFE_NAME.sub("", label).strip(" .")[:80] or "attachment"
    if not PurePosixPath(name).suffix:
        name += mimetypes.guess_extension(mimetype or "") or ""
    return name
