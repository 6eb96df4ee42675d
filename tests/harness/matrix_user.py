"""A minimal client-server API client acting as a human Matrix user in tests."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from typing import Any, TypeVar
from urllib.parse import quote, urlencode

import aiohttp
from yarl import URL

CS = "/_matrix/client/v3"
T = TypeVar("T")
# Longest single /sync long-poll; waits loop over several of these until their own deadline.
_LONG_POLL_MS = 10_000


def _q(part: str) -> str:
    # Room ids, aliases and mxids contain '!', '#', ':' and must be escaped in a path segment.
    return quote(part, safe="")


def _sync_filter(timeline_limit: int) -> str:
    return json.dumps(
        {
            "presence": {"not_types": ["*"]},
            "account_data": {"not_types": ["*"]},
            "room": {
                "timeline": {"limit": timeline_limit},
                "state": {"lazy_load_members": True},
                "account_data": {"not_types": ["*"]},
            },
        }
    )


# A large timeline limit so that an incremental sync is never "limited" in tests and no event
# is skipped between two syncs.
_WAIT_FILTER = _sync_filter(1000)
_LIGHT_FILTER = _sync_filter(1)


class MatrixError(Exception):
    """A non-2xx answer from the homeserver."""

    def __init__(self, status: int, errcode: str, error: str) -> None:
        super().__init__(f"{status} {errcode}: {error}")
        self.status = status
        self.errcode = errcode
        self.error = error


def _describe(event: dict[str, Any]) -> str:
    body = event.get("content", {}).get("body")
    suffix = f" body={body!r}" if body is not None else ""
    return f"{event.get('type')} from {event.get('sender')}{suffix}"


class MatrixUser:
    """One logged-in user; keeps a /sync position and every timeline event seen since it."""

    def __init__(self, base_url: str, mxid: str, access_token: str) -> None:
        self.base_url = base_url.rstrip("/")
        self.mxid = mxid
        self.access_token = access_token
        self._session: aiohttp.ClientSession | None = None
        self._since: str | None = None
        self._sync_lock = asyncio.Lock()
        self._generation = 0
        self._events: dict[str, list[dict[str, Any]]] = {}
        self._typing: dict[str, set[str]] = {}
        self._invites: list[str] = []

    def __repr__(self) -> str:
        return f"<MatrixUser {self.mxid}>"

    # -- HTTP ---------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, Any] | list[tuple[str, str]] | None = None,
        timeout: float = 60,
    ) -> dict[str, Any]:
        """Call ``path`` (already escaped, e.g. ``/_matrix/client/v3/...``) and return JSON."""
        url = self.base_url + path
        if query:
            url += "?" + urlencode(query, doseq=True)
        async with self._http().request(
            method,
            URL(url, encoded=True),
            json=body,
            timeout=aiohttp.ClientTimeout(total=timeout),
        ) as resp:
            data = await resp.json(content_type=None) if resp.content_length != 0 else {}
            if resp.status >= 300:
                data = data if isinstance(data, dict) else {}
                raise MatrixError(resp.status, data.get("errcode", ""), data.get("error", ""))
            return data if isinstance(data, dict) else {"result": data}

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {self.access_token}"}
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- rooms ----------------------------------------------------------------------------------

    async def whoami(self) -> str:
        return str((await self.request("GET", f"{CS}/account/whoami"))["user_id"])

    async def create_room(self, **body: Any) -> str:
        return str((await self.request("POST", f"{CS}/createRoom", body=body))["room_id"])

    async def join(self, room_id_or_alias: str, via: list[str] | None = None) -> str:
        query = [("via", server) for server in via or []]
        # server_name is the pre-1.12 spelling of via; harmless to send both.
        query += [("server_name", server) for server in via or []]
        data = await self.request(
            "POST", f"{CS}/join/{_q(room_id_or_alias)}", body={}, query=query
        )
        room_id = str(data["room_id"])
        if room_id in self._invites:
            self._invites.remove(room_id)
        if room_id not in self._events:
            # What was sent before we joined, as a client shows it on joining: Synapse puts it
            # in the room's first sync, Tuwunel only the join (the rest comes by
            # back-pagination, which clients do).
            self._add(room_id, await self.messages(room_id))
        return room_id

    async def leave(self, room_id: str) -> None:
        await self.request("POST", f"{CS}/rooms/{_q(room_id)}/leave", body={})

    async def invite(self, room_id: str, mxid: str) -> None:
        await self.request("POST", f"{CS}/rooms/{_q(room_id)}/invite", body={"user_id": mxid})

    async def kick(self, room_id: str, mxid: str, reason: str | None = None) -> None:
        body = {"user_id": mxid} | ({"reason": reason} if reason is not None else {})
        await self.request("POST", f"{CS}/rooms/{_q(room_id)}/kick", body=body)

    async def send_event(self, room_id: str, type: str, content: dict[str, Any]) -> str:
        path = f"{CS}/rooms/{_q(room_id)}/send/{_q(type)}/{uuid.uuid4().hex}"
        return str((await self.request("PUT", path, body=content))["event_id"])

    async def send_text(
        self,
        room_id: str,
        body: str,
        *,
        thread_root: str | None = None,
        reply_to: str | None = None,
        mentions: list[str] | None = None,
        html: str | None = None,
        msgtype: str = "m.text",
    ) -> str:
        content: dict[str, Any] = {"msgtype": msgtype, "body": body}
        if html is not None:
            content["format"] = "org.matrix.custom.html"
            content["formatted_body"] = html
        if mentions is not None:
            content["m.mentions"] = {"user_ids": mentions}
        if thread_root is not None:
            # Thread messages carry a reply fallback for clients without thread support.
            content["m.relates_to"] = {
                "rel_type": "m.thread",
                "event_id": thread_root,
                "is_falling_back": reply_to is None,
                "m.in_reply_to": {"event_id": reply_to or thread_root},
            }
        elif reply_to is not None:
            content["m.relates_to"] = {"m.in_reply_to": {"event_id": reply_to}}
        return await self.send_event(room_id, "m.room.message", content)

    async def upload(self, data: bytes, content_type: str, filename: str) -> str:
        """Upload to the media repository; the mxc URI."""
        url = f"{self.base_url}/_matrix/media/v3/upload?" + urlencode({"filename": filename})
        headers = {"Content-Type": content_type}
        async with self._http().post(url, data=data, headers=headers) as resp:
            body = await resp.json(content_type=None)
            if resp.status >= 300:
                raise MatrixError(resp.status, body.get("errcode", ""), body.get("error", ""))
            return str(body["content_uri"])

    async def download(self, mxc: str) -> tuple[bytes, str]:
        """The bytes and content type behind an mxc URI (authenticated media)."""
        server, media_id = mxc.removeprefix("mxc://").split("/", 1)
        url = f"{self.base_url}/_matrix/client/v1/media/download/{server}/{media_id}"
        async with self._http().get(url) as resp:
            if resp.status >= 300:
                raise MatrixError(resp.status, "", await resp.text())
            return await resp.read(), resp.content_type

    async def send_media(
        self, room_id: str, msgtype: str, filename: str, data: bytes, mimetype: str, **extra: Any
    ) -> str:
        """Upload ``data`` and send it as ``msgtype`` (m.image, m.file, m.audio …); ``extra``
        goes into the content (``info`` overrides the real size and type, a ``body`` differing
        from the filename is a caption)."""
        mxc = await self.upload(data, mimetype, filename)
        content: dict[str, Any] = {
            "msgtype": msgtype,
            "body": filename,
            "filename": filename,
            "url": mxc,
            "info": {"mimetype": mimetype, "size": len(data)},
        }
        return await self.send_event(room_id, "m.room.message", {**content, **extra})

    async def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        path = f"{CS}/rooms/{_q(room_id)}/redact/{_q(event_id)}/{uuid.uuid4().hex}"
        body = {"reason": reason} if reason else {}
        return str((await self.request("PUT", path, body=body))["event_id"])

    async def send_state(
        self, room_id: str, type: str, state_key: str, content: dict[str, Any]
    ) -> str:
        path = f"{CS}/rooms/{_q(room_id)}/state/{_q(type)}/{_q(state_key)}"
        return str((await self.request("PUT", path, body=content))["event_id"])

    async def get_state(
        self, room_id: str, type: str, state_key: str = ""
    ) -> dict[str, Any] | None:
        """The content of one state event, or None if the room has none."""
        path = f"{CS}/rooms/{_q(room_id)}/state/{_q(type)}/{_q(state_key)}"
        try:
            return await self.request("GET", path)
        except MatrixError as exc:
            if exc.status == 404:
                return None
            raise

    async def room_state(self, room_id: str) -> list[dict[str, Any]]:
        data = await self.request("GET", f"{CS}/rooms/{_q(room_id)}/state")
        return list(data["result"])

    async def joined_members(self, room_id: str) -> dict[str, dict[str, Any]]:
        data = await self.request("GET", f"{CS}/rooms/{_q(room_id)}/joined_members")
        return dict(data["joined"])

    async def invited_rooms(self) -> list[str]:
        """Rooms the user is invited to right now (a fresh full sync; the wait position stays)."""
        data = await self.request("GET", f"{CS}/sync", query={"filter": _LIGHT_FILTER})
        return list(data.get("rooms", {}).get("invite", {}))

    async def messages(self, room_id: str, limit: int = 50) -> list[dict[str, Any]]:
        """The latest ``limit`` timeline events of the room, oldest first."""
        query = {"dir": "b", "limit": str(limit)}
        data = await self.request("GET", f"{CS}/rooms/{_q(room_id)}/messages", query=query)
        return list(reversed(data["chunk"]))

    async def hierarchy(self, space_id: str) -> list[dict[str, Any]]:
        """All rooms of the space's hierarchy (the space itself first), following pagination."""
        rooms: list[dict[str, Any]] = []
        query: dict[str, str] = {"limit": "100"}
        while True:
            path = f"/_matrix/client/v1/rooms/{_q(space_id)}/hierarchy"
            data = await self.request("GET", path, query=query)
            rooms.extend(data["rooms"])
            if not data.get("next_batch"):
                return rooms
            query["from"] = data["next_batch"]

    async def set_typing(self, room_id: str, typing: bool = True, timeout_ms: int = 30000) -> None:
        body: dict[str, Any] = {"typing": typing}
        if typing:
            body["timeout"] = timeout_ms
        await self.request("PUT", f"{CS}/rooms/{_q(room_id)}/typing/{_q(self.mxid)}", body=body)

    async def resolve_alias(self, alias: str) -> str | None:
        try:
            return str((await self.request("GET", f"{CS}/directory/room/{_q(alias)}"))["room_id"])
        except MatrixError as exc:
            if exc.status == 404:
                return None
            raise

    # -- sync and waiting -----------------------------------------------------------------------

    async def _sync(self, timeout_ms: int, generation: int, filter_: str = _WAIT_FILTER) -> None:
        async with self._sync_lock:
            if generation != self._generation:
                return  # another waiter synced while we queued: re-check what it brought
            query = {"timeout": str(timeout_ms), "filter": filter_}
            if self._since is not None:
                query["since"] = self._since
            data = await self.request(
                "GET", f"{CS}/sync", query=query, timeout=timeout_ms / 1000 + 30
            )
            self._ingest(data)
            self._since = data["next_batch"]
            self._generation += 1

    def _ingest(self, data: dict[str, Any]) -> None:
        rooms = data.get("rooms", {})
        for section in ("join", "leave"):
            for room_id, room in rooms.get(section, {}).items():
                if room_id in self._invites:
                    self._invites.remove(room_id)
                self._add(room_id, room.get("timeline", {}).get("events", []))
                for event in room.get("ephemeral", {}).get("events", []):
                    if event.get("type") == "m.typing":
                        self._typing[room_id] = set(event["content"].get("user_ids", []))
        for room_id in rooms.get("invite", {}):
            if room_id not in self._invites:
                self._invites.append(room_id)

    def _add(self, room_id: str, events: list[dict[str, Any]]) -> None:
        """Timeline events, each once (back-pagination and a sync may both bring one)."""
        seen = self._events.setdefault(room_id, [])
        known = {e.get("event_id") for e in seen}
        seen.extend({**e, "room_id": room_id} for e in events if e.get("event_id") not in known)

    async def mark(self) -> None:
        """Catch up with the server and forget everything seen so far; waits start afresh."""
        await self._sync(0, self._generation, _LIGHT_FILTER)
        self._events.clear()
        self._invites.clear()

    def events_seen(self, room_id: str) -> list[dict[str, Any]]:
        """Timeline events of the room seen by syncs since the last mark(), oldest first."""
        return list(self._events.get(room_id, []))

    async def _wait(
        self,
        check: Callable[[], T | None],
        timeout: float,
        what: str,
    ) -> T:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            generation = self._generation
            found = check()
            if found is not None:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"{self.mxid}: no {what} within {timeout:.0f}s")
            await self._sync(int(min(remaining * 1000, _LONG_POLL_MS)), generation)

    async def wait_for_event(
        self,
        room_id: str,
        predicate: Callable[[dict[str, Any]], bool],
        timeout: float = 30,
    ) -> dict[str, Any]:
        """The first timeline event of the room (since the last mark) matching ``predicate``.

        A predicate raising KeyError/IndexError/TypeError counts as "no match", so
        ``lambda e: e["content"]["body"] == "hi"`` can skip member events without guards.
        """

        def check() -> dict[str, Any] | None:
            for event in self._events.get(room_id, []):
                try:
                    if predicate(event):
                        return event
                except (KeyError, IndexError, TypeError):
                    continue
            return None

        try:
            return await self._wait(check, timeout, f"matching event in {room_id}")
        except TimeoutError as exc:
            seen = "\n  ".join(_describe(e) for e in self._events.get(room_id, [])[-20:])
            raise TimeoutError(f"{exc}; last events seen:\n  {seen or '<none>'}") from None

    async def wait_for_invite(
        self,
        room_id: str | None = None,
        timeout: float = 30,
    ) -> str:
        """Wait for an invite (to ``room_id``, or the oldest pending one) and return its room."""

        def check() -> str | None:
            for pending in self._invites:
                if room_id is None or pending == room_id:
                    self._invites.remove(pending)
                    return pending
            return None

        return await self._wait(check, timeout, f"invite to {room_id or 'any room'}")

    async def wait_for_typing(
        self,
        room_id: str,
        user_id: str,
        timeout: float = 30,
        typing: bool = True,
    ) -> bool:
        """True once ``user_id`` is typing (with typing=False: is not); False on timeout."""

        def check() -> bool | None:
            return True if (user_id in self._typing.get(room_id, set())) == typing else None

        try:
            return await self._wait(check, timeout, "typing change")
        except TimeoutError:
            return False
