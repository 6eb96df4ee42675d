"""An OpenAI-compatible transcription endpoint (``POST /v1/audio/transcriptions``) that
answers a fixed text and records what it was sent."""

from __future__ import annotations

from typing import Any

from aiohttp import web


class FakeTranscriber:
    def __init__(self, text: str) -> None:
        self.text = text
        self.received: list[dict[str, Any]] = []  # filename, model, bytes, authorization
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def start(self) -> str:
        app = web.Application()
        app.router.add_post("/v1/audio/transcriptions", self._transcribe)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{self._runner.addresses[0][1]}/v1"
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _transcribe(self, request: web.Request) -> web.Response:
        form = await request.post()
        upload = form["file"]
        assert isinstance(upload, web.FileField)
        self.received.append(
            {
                "filename": upload.filename,
                "model": form.get("model"),
                "bytes": upload.file.read(),
                "authorization": request.headers.get("Authorization"),
            }
        )
        return web.json_response({"text": self.text})
