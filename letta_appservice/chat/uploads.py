"""Attachments in what an agent says (chat/attachments.py), posted to Matrix: fetched from
their data: URI or the Letta server, checked against the media limits, uploaded to the
homeserver as the agent's puppet. What cannot be posted becomes a short notice in its place,
never a link to the Letta server."""

from __future__ import annotations

import logging

from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError

from ..config.media import MediaConfig
from ..errors import TooLarge
from ..letta.client import LettaClient
from ..letta.downloads import download
from ..letta.errors import LettaError
from ..matrix import media as mx_media
from ..matrix.format import FILE, IMAGE, NOTICE
from .attachments import data_type, decode_data, filename
from .media import size_text
from .parts import Part

log = logging.getLogger("letta_appservice.media")
NOT_POSTED = "{label} (from the agent's answer) could not be posted: {why}."


class NotPosted(Exception):
    """Why an attachment cannot be posted, in words for the room."""


class AgentFiles:
    """``letta_url`` is what ``parts_for`` takes as ``attach``: None when attachments are off."""

    def __init__(self, cfg: MediaConfig, letta: LettaClient) -> None:
        self.cfg = cfg
        self.letta = letta
        self.letta_url = letta.base_url if cfg.from_agents else None

    async def post(self, api: AppServiceAPI, part: Part) -> Part:
        """The image or file part of the attachment ``part``, uploaded as ``api``'s user, or
        a notice saying why it cannot be."""
        try:
            data, mimetype = await self._fetch(part.source)
            msgtype, limit = self._kind(mimetype)
            if len(data) > limit:
                raise NotPosted(f"it is {size_text(len(data))}; the limit is {size_text(limit)}")
            name = filename(part.body, mimetype)
            try:
                url = await mx_media.upload(api, data, mimetype, name)
            except (MatrixRequestError, MatrixConnectionError) as e:
                log.warning("Upload of an agent's attachment (%s) failed: %s", mimetype, e)
                raise NotPosted("the homeserver did not take it") from e
        except NotPosted as why:
            return Part(NOTICE, NOT_POSTED.format(label=_quoted(part.body), why=why))
        return Part(msgtype, name, url=url, mimetype=mimetype, size=len(data))

    def _kind(self, mimetype: str) -> tuple[str, int]:
        if mimetype in self.cfg.image_types:
            return IMAGE, self.cfg.max_image_bytes
        return FILE, self.cfg.max_file_bytes

    async def _fetch(self, source: str) -> tuple[bytes, str]:
        cfg = self.cfg
        if source[:5].lower() == "data:":
            try:
                data = decode_data(source)
            except ValueError as e:
                raise NotPosted("its data is malformed or cut short") from e
            return data, data_type(source)
        limit = max(cfg.max_image_bytes, cfg.max_file_bytes)
        try:
            data, mimetype = await download(self.letta, source, limit)
        except TooLarge as e:
            raise NotPosted(f"it is over the limit of {size_text(limit)}") from e
        except ValueError as e:
            raise NotPosted("it is not on the Letta server") from e
        except LettaError as e:
            log.warning("An agent's attachment could not be fetched: %s", e)
            status = f" (HTTP {e.status})" if e.status else ""
            raise NotPosted(f"Letta did not give it{status}") from e
        return data, mimetype.lower()


def _quoted(label: str) -> str:
    return "“" + label[:100] + "”"
