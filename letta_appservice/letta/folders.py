"""Files people send to an agent: one Letta folder per agent ("matrix-<agent id>"), made and
attached to the agent on first use, where Letta parses and embeds them for the agent to search
(servers before folders call them sources: same shapes, other paths)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any
from urllib.parse import quote

import aiohttp

from .client import LettaClient
from .errors import LettaError, http_error, read_detail, safe_url, transport_errors

log = logging.getLogger("letta_appservice.letta")
PROCESSING_WAIT = 60.0  # seconds a file may take to be parsed before the agent is told anyway
POLL = 0.5
DONE = ("completed", "error")


def folder_name(agent_id: str) -> str:
    return f"matrix-{agent_id}"


class Folders:
    """The agent's folder: found by name or created (with the agent's embedding), attached
    once per process; uploads wait until Letta has parsed the file (or gave up on it)."""

    def __init__(self, client: LettaClient) -> None:
        self.client = client
        self._ids: dict[str, str] = {}  # agent id -> its attached folder's id
        self._locks: dict[str, asyncio.Lock] = {}
        self._kind = "folders"  # "sources" on servers before folders

    async def upload(
        self, agent_id: str, filename: str, data: bytes, mimetype: str, *, again: bool = False
    ) -> dict[str, Any]:
        """Upload ``data`` into the agent's folder; the file's metadata as Letta returns it
        (``file_name``: the name it got, suffixed if taken) once processing has finished.
        ``again``: a retry of the same message, which keeps a file of that name (no copy).
        LettaError kind "client" (415) for a type Letta cannot read."""
        folder = await self._folder(agent_id)
        path = f"/v1/{self._kind}/{quote(folder, safe='')}/upload"
        form = aiohttp.FormData()
        form.add_field("file", data, filename=filename, content_type=mimetype)
        handling = "skip" if again else "suffix"
        meta = await self._post_form(path, form, [("duplicate_handling", handling)])
        if not isinstance(meta, dict):
            raise LettaError("protocol", f"unexpected upload answer: {str(meta)[:200]}")
        return await self._processed(folder, meta)

    async def _folder(self, agent_id: str) -> str:
        lock = self._locks.setdefault(agent_id, asyncio.Lock())
        async with lock:
            if agent_id in self._ids:
                return self._ids[agent_id]
            name = folder_name(agent_id)
            try:
                found = await self._find(name)
            except LettaError as exc:
                if exc.kind != "not_found":
                    raise
                self._kind = "sources"
                found = await self._find(name)
            folder = found or await self._create(agent_id, name)
            attach = f"/v1/agents/{quote(agent_id, safe='')}/{self._kind}/attach/{folder}"
            await self.client.call("PATCH", attach, idempotent=True)
            self._ids[agent_id] = folder
            return folder

    async def _find(self, name: str) -> str | None:
        params = [("name", name), ("limit", "1")]
        found = await self.client.call("GET", f"/v1/{self._kind}/", params=params, idempotent=True)
        if isinstance(found, list):
            for folder in found:
                if isinstance(folder, dict) and folder.get("name") == name:
                    return str(folder["id"])
        return None

    async def _create(self, agent_id: str, name: str) -> str:
        agent = await self.client.call(
            "GET", f"/v1/agents/{quote(agent_id, safe='')}", idempotent=True
        )
        body: dict[str, Any] = {"name": name, "description": "Files sent to the agent in Matrix"}
        # The agent's own embedding, so its searches and the folder's chunks match.
        if isinstance(agent, dict) and agent.get("embedding_config"):
            body["embedding_config"] = agent["embedding_config"]
        elif isinstance(agent, dict) and agent.get("embedding"):
            body["embedding"] = agent["embedding"]
        made = await self.client.call("POST", f"/v1/{self._kind}/", body=body, idempotent=False)
        if not isinstance(made, dict) or not isinstance(made.get("id"), str):
            raise LettaError("protocol", f"unexpected folder: {str(made)[:200]}")
        log.info("Made Letta folder %s for agent %s", name, agent_id)
        return made["id"]

    async def _processed(self, folder: str, meta: dict[str, Any]) -> dict[str, Any]:
        file_id = meta.get("id")
        deadline = time.monotonic() + PROCESSING_WAIT
        path = f"/v1/{self._kind}/{quote(folder, safe='')}/files/{quote(str(file_id), safe='')}"
        while (
            self._kind == "folders"
            and isinstance(file_id, str)
            and str(meta.get("processing_status")) not in DONE
            and time.monotonic() < deadline
        ):
            await asyncio.sleep(POLL)
            latest = await self.client.call("GET", path, idempotent=True)
            if isinstance(latest, dict):
                meta = latest
        return meta

    async def _post_form(
        self, path: str, form: aiohttp.FormData, params: list[tuple[str, str]]
    ) -> Any:
        client = self.client
        url = safe_url(client.base_url + path)
        headers = {k: v for k, v in client.headers.items() if k != "Content-Type"}
        started = time.monotonic()
        try:
            with transport_errors(f"Letta POST {url}", url, client.timeout):
                async with client.http().post(
                    client.base_url + path,
                    data=form,
                    params=params,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=client.timeout),
                ) as resp:
                    if resp.status >= 400:
                        raise http_error(resp.status, "POST", url, await read_detail(resp))
                    body = await resp.json(content_type=None)
        except LettaError as exc:
            client.observe(path, started, exc.kind)
            raise
        client.observe(path, started, None)
        return body
