"""Media people send, for an agent: images as image parts, files into the agent's Letta folder,
voice transcribed where a transcription API is set; what cannot be passed on gets a notice."""

from __future__ import annotations

import base64
import logging
import mimetypes
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any

import attrs
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError

from ..config.media import MediaConfig
from ..letta.errors import LettaError
from ..letta.folders import Folders, folder_name
from ..letta.versions import UserContent
from ..matrix import media as mx_media
from .transcribe import Transcriber

log = logging.getLogger("letta_appservice.media")
IMAGE, FILE, AUDIO, VIDEO = "image", "file", "audio", "video"
_KINDS = {"m.image": IMAGE, "m.file": FILE, "m.audio": AUDIO, "m.video": VIDEO}
# What Letta's folders parse (letta/services/file_processor/file_types.py, 0.16.8).
READABLE = frozenset(
    ".pdf .txt .md .markdown .json .jsonl .csv .py .js .ts .java .cpp .cxx .c .h .cs .php .rb "
    ".go .rs .swift .kt .scala .r .m .html .htm .css .scss .sass .less .vue .jsx .tsx .xml "
    ".yaml .yml .toml .ini .cfg .conf .sh .bash .ps1 .bat .cmd .dockerfile .sql".split()
)
TOO_BIG = (
    "This {what} is {size}; agents on this bridge take {plural} up to {limit}. It was not "
    "passed on."
)
UNREADABLE = (
    "Letta cannot read {name}: agents take PDF, text, Markdown, JSON, CSV and source code "
    "files. It was not passed on."
)
NO_IMAGES = "Images are not passed to agents on this bridge; describe it in words."
NO_FILES = "Files are not passed to agents on this bridge; paste the text instead."
IMAGE_TYPE = "Agents take PNG, JPEG, GIF and WebP images, not {mimetype}; it was not passed on."
NO_EARS = (
    "Agents cannot listen to voice or audio messages here: Letta takes no audio, and this "
    "bridge has no transcription set up (an admin can set media.transcription_url to an "
    "OpenAI-compatible speech-to-text API). Please say it in words."
)
NO_FOLDERS = "This Letta server cannot take files; paste the text instead."
NO_VIDEO = "Agents cannot watch videos; this one was not passed on. Describe it in words."
BROKEN = "This {what} could not be fetched from the homeserver; it was not passed on."


@attrs.frozen
class Media:
    """A media message: what it is, where it is, what the person wrote with it."""

    kind: str
    url: str
    filename: str
    mimetype: str
    size: int | None
    caption: str

    @property
    def extension(self) -> str:
        return PurePosixPath(self.filename).suffix.lower()


def media_of(content: Mapping[str, Any]) -> Media | None:
    """The media of a message (None for text and for encrypted files, which have no url)."""
    kind = _KINDS.get(str(content.get("msgtype")))
    url, body = content.get("url"), content.get("body")
    if kind is None or not isinstance(url, str):
        return None
    body = body if isinstance(body, str) else ""
    filename = content.get("filename")
    # Matrix 1.10: with a `filename`, a different `body` is the caption.
    if isinstance(filename, str) and filename:
        caption = body if body != filename else ""
    else:
        filename, caption = body or kind, ""
    info = content.get("info") if isinstance(content.get("info"), Mapping) else {}
    mimetype = info.get("mimetype") if isinstance(info.get("mimetype"), str) else ""
    mimetype = (mimetype or mimetypes.guess_type(filename)[0] or "").lower()
    size = info.get("size") if isinstance(info.get("size"), int) else None
    if kind == FILE and mimetype.startswith("image/"):
        kind = IMAGE  # a picture sent as a file is still a picture
    return Media(kind, url, filename, mimetype, size, caption.strip())


def size_text(n: int) -> str:
    """A size as people read it: 5 MB, 1.5 MB, 800 KB, 120 bytes."""
    for unit, scale in (("MB", 1024 * 1024), ("KB", 1024)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}".replace(".0 ", " ")
    return f"{n} bytes"


def _too_big(media: Media, limit: int, size: int | None = None) -> str:
    plural = {IMAGE: "images", FILE: "files", AUDIO: "voice messages"}[media.kind]
    what = {IMAGE: "image", FILE: "file", AUDIO: "voice message"}[media.kind]
    shown = size_text(size) if size is not None else f"over {size_text(limit)}"
    return TOO_BIG.format(what=what, size=shown, plural=plural, limit=size_text(limit))


def refusal(media: Media, cfg: MediaConfig) -> str | None:
    """Why this media cannot reach an agent (a notice for the person), from what the event
    says about it; None when it may."""
    size = media.size or 0
    if media.kind == IMAGE:
        if not cfg.images:
            return NO_IMAGES
        if media.mimetype not in cfg.image_types:
            return IMAGE_TYPE.format(mimetype=media.mimetype or "this type")
        return _too_big(media, cfg.max_image_bytes, size) if size > cfg.max_image_bytes else None
    if media.kind == FILE:
        if not cfg.files:
            return NO_FILES
        if media.extension not in READABLE:
            return UNREADABLE.format(name=_quoted(media.filename))
        return _too_big(media, cfg.max_file_bytes, size) if size > cfg.max_file_bytes else None
    if media.kind == AUDIO:
        if not cfg.transcription_url:
            return NO_EARS
        return _too_big(media, cfg.max_audio_bytes, size) if size > cfg.max_audio_bytes else None
    return NO_VIDEO


def _quoted(name: str) -> str:
    return "`" + name.replace("`", "'")[:100] + "`"


def describe(media: Media) -> str:
    """The text part of a media message for the agent (what Letta stores as its text)."""
    what = {IMAGE: "an image", FILE: "a file", AUDIO: "a voice message"}.get(media.kind, "media")
    line = f"(sent {what}: {media.filename})"
    return f"{line}\n{media.caption}" if media.caption else line


@attrs.frozen
class Refused:
    """The media could not be passed on after all; ``text`` tells the person why."""

    text: str


class MediaIntake:
    """Fetches a media message from the homeserver and makes it what the agent receives."""

    def __init__(self, cfg: MediaConfig, folders: Folders, transcriber: Transcriber) -> None:
        self.cfg = cfg
        self.folders = folders
        self.transcriber = transcriber

    async def content(
        self, api: AppServiceAPI, agent_id: str, media: Media, text: str, *, again: bool
    ) -> UserContent | Refused:
        """``text`` is the attribution line and ``describe(media)``; ``again``: a retry of
        the same message. Homeserver and Letta errors propagate (retried by the turn)."""
        cfg = self.cfg
        limit = {IMAGE: cfg.max_image_bytes, FILE: cfg.max_file_bytes}.get(
            media.kind, cfg.max_audio_bytes
        )
        try:
            data = await mx_media.download(api, media.url, limit)
        except mx_media.TooLarge:
            return Refused(_too_big(media, limit))
        except ValueError:
            return Refused(BROKEN.format(what=media.kind))
        except MatrixRequestError as e:
            if 400 <= e.http_status < 500 and e.http_status not in (408, 429):  # final answers
                return Refused(BROKEN.format(what=media.kind))
            raise
        if media.kind == IMAGE:
            image = {"type": "base64", "media_type": media.mimetype}
            image["data"] = base64.b64encode(data).decode("ascii")
            return [{"type": "text", "text": text}, {"type": "image", "source": image}]
        if media.kind == AUDIO:
            heard = await self.transcriber.transcribe(data, media.filename, media.mimetype)
            return f"{text}\n(transcribed) {heard}"
        try:
            meta = await self.folders.upload(
                agent_id, media.filename, data, media.mimetype, again=again
            )
        except LettaError as exc:
            if exc.status == 415:
                return Refused(UNREADABLE.format(name=_quoted(media.filename)))
            if exc.kind == "not_found":  # a server without folders (or sources)
                return Refused(NO_FOLDERS)
            raise
        name = meta.get("file_name") or media.filename
        state = str(meta.get("processing_status") or "")
        said = f"{text}\nIt is in your files (folder {folder_name(agent_id)}) as {name!r}."
        if state == "error":
            said += " Letta could not read its contents."
        return said
