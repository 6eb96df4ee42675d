"""Voice messages as text: an OpenAI-compatible transcription API (``POST /audio/transcriptions``),
when one is configured."""

from __future__ import annotations

import aiohttp

from ..config.media import MediaConfig
from ..letta.errors import LettaError, http_error, read_detail, safe_url, transport_errors

TIMEOUT = 120.0


class Transcriber:
    """Failures are LettaErrors (the same kinds), so the turn retries or reports them alike."""

    def __init__(self, cfg: MediaConfig) -> None:
        self.base_url, self.model = cfg.transcription_url, cfg.transcription_model
        key = cfg.transcription_key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._session: aiohttp.ClientSession | None = None

    async def transcribe(self, data: bytes, filename: str, mimetype: str) -> str:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        url = f"{self.base_url}/audio/transcriptions"
        shown = safe_url(url)
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type=mimetype or None)
        form.add_field("model", self.model)
        with transport_errors(f"Transcription POST {shown}", shown, TIMEOUT):
            async with self._session.post(
                url, data=form, headers=self._headers, timeout=aiohttp.ClientTimeout(TIMEOUT)
            ) as resp:
                if resp.status >= 400:
                    raise http_error(resp.status, "POST", shown, await read_detail(resp))
                body = await resp.json(content_type=None)
        text = body.get("text") if isinstance(body, dict) else None
        if not isinstance(text, str):
            raise LettaError("protocol", f"transcription without text: {str(body)[:200]}")
        return text.strip()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
