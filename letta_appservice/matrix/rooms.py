"""Agent rooms and the space on the homeserver: request bodies (pure), the raw calls that send
them (exactly one request each), the appservice API and the 429 middleware of the homeserver
HTTP session."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterable, Sequence
from typing import Any

from aiohttp import ClientHandlerType, ClientRequest, ClientResponse, ClientSession
from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.errors import MatrixRequestError, MNotFound
from mautrix.types import RoomID, UserID

from ..config import Config

log = logging.getLogger("letta_appservice.matrix.rooms")

SPACE_CHILD, SPACE_PARENT = "m.space.child", "m.space.parent"
ROOM_NAME, ROOM_TOPIC, JOIN_RULES = "m.room.name", "m.room.topic", "m.room.join_rules"
POWER_LEVELS = "m.room.power_levels"
BOT_LEVEL, PUPPET_LEVEL, ADMIN_LEVEL = 100, 50, 100


class RoomInUse(Exception):
    """createRoom refused the alias: a room with it exists (perhaps our own, from a crash)."""


# --- request bodies (pure) -------------------------------------------------------------------


def restricted_to(space_id: str) -> dict[str, Any]:
    """Join rule: members of the space may join (room version 8+; Tuwunel/Synapse default 10+)."""
    return {
        "join_rule": "restricted",
        "allow": [{"type": "m.room_membership", "room_id": space_id}],
    }


def space_parent(domain: str) -> dict[str, Any]:
    return {"via": [domain], "canonical": True}


def space_child(domain: str) -> dict[str, Any]:
    return {"via": [domain]}


def creators_have_power(room_version: str) -> bool:
    """Room version 12 (MSC4289, and its hydra test versions) gives room creators unlimited
    power: their power_levels must not list them, while older versions must list them."""
    if room_version.isdigit():
        return int(room_version) >= 12
    return room_version.startswith("org.matrix.hydra")


def _creator_levels(bot: str, list_creator: bool) -> dict[str, int]:
    return {bot: BOT_LEVEL} if list_creator else {}


def agent_room_body(
    *,
    alias_localpart: str,
    name: str,
    topic: str,
    bot: str,
    puppet: str,
    admins: Sequence[str],
    space_id: str,
    domain: str,
    list_creator: bool = True,
) -> dict[str, Any]:
    """createRoom body for an agent room: everything in one request (name, topic, invites,
    power levels, space parent, restricted join rule). ``list_creator``: see
    creators_have_power (the bot creates the room).

    The public_chat preset is for guest access: it forbids guests (private_chat lets them
    join), and on Synapse it is one event less (no m.room.guest_access). Its public join rule
    is never in force: Synapse skips it when initial_state has one, and Tuwunel replaces it
    while it holds the room's state lock, before the alias exists. Invites stay open to
    members (level 0) as with private_chat on both servers."""
    users = _creator_levels(bot, list_creator) | {puppet: PUPPET_LEVEL}
    users |= {a: ADMIN_LEVEL for a in admins}
    body: dict[str, Any] = {
        "preset": "public_chat",
        "visibility": "private",
        "room_alias_name": alias_localpart,
        "name": name,
        "invite": [puppet, *admins],
        "initial_state": [
            {"type": SPACE_PARENT, "state_key": space_id, "content": space_parent(domain)},
            {"type": JOIN_RULES, "state_key": "", "content": restricted_to(space_id)},
        ],
        "power_level_content_override": {"users": users, "invite": 0},
    }
    if topic:
        body["topic"] = topic
    return body


def space_body(
    *,
    alias_localpart: str,
    name: str,
    bot: str,
    admins: Sequence[str],
    list_creator: bool = True,
) -> dict[str, Any]:
    """createRoom body for the space: invite-only, bridge admins invited at power 100."""
    return {
        "preset": "private_chat",
        "visibility": "private",
        "room_alias_name": alias_localpart,
        "name": name,
        "invite": list(admins),
        "creation_content": {"type": "m.space"},
        "power_level_content_override": {
            "users": _creator_levels(bot, list_creator) | {a: ADMIN_LEVEL for a in admins}
        },
    }


def children_of(state: Iterable[dict[str, Any]]) -> set[str]:
    """Room ids the space lists as children (an m.space.child without ``via`` is removed)."""
    return {
        ev["state_key"]
        for ev in state
        if ev.get("type") == SPACE_CHILD and (ev.get("content") or {}).get("via")
    }


# --- calls (each is exactly one homeserver request) ------------------------------------------
# Raw requests instead of IntentAPI helpers, which add state queries, joins and power-level
# look-ups of their own; here the cost of every step is visible.


async def create_room(api: AppServiceAPI, body: dict[str, Any]) -> RoomID:
    try:
        resp = await api.request(Method.POST, Path.v3.createRoom, body)
    except MatrixRequestError as e:
        if e.errcode == "M_ROOM_IN_USE":
            raise RoomInUse(body.get("room_alias_name", "")) from e
        raise
    return RoomID(resp["room_id"])


async def resolve_alias(api: AppServiceAPI, alias: str) -> RoomID | None:
    try:
        resp = await api.request(Method.GET, Path.v3.directory.room[alias])
    except MatrixRequestError as e:
        if e.http_status == 404:
            return None
        raise
    return RoomID(resp["room_id"])


async def remove_alias(api: AppServiceAPI, alias: str) -> None:
    try:
        await api.request(Method.DELETE, Path.v3.directory.room[alias])
    except MatrixRequestError as e:
        if e.http_status != 404:
            raise


async def join(api: AppServiceAPI, room_id: str) -> None:
    await api.request(Method.POST, Path.v3.rooms[room_id].join, {})


async def leave(api: AppServiceAPI, room_id: str, reason: str | None = None) -> None:
    """Leave (or, when only invited, decline: the reason shows in the timeline)."""
    await api.request(
        Method.POST, Path.v3.rooms[room_id].leave, {"reason": reason} if reason else {}
    )


async def invite(api: AppServiceAPI, room_id: str, user_id: str) -> None:
    await api.request(Method.POST, Path.v3.rooms[room_id].invite, {"user_id": user_id})


async def membership(api: AppServiceAPI, room_id: str, user_id: str) -> str | None:
    """The user's membership in the room as ``api`` sees it; None when it has none."""
    try:
        member = await api.request(
            Method.GET, Path.v3.rooms[room_id].state["m.room.member"][user_id]
        )
    except MNotFound:
        return None
    value = member.get("membership")
    return value if isinstance(value, str) else None


async def unban(api: AppServiceAPI, room_id: str, user_id: str) -> None:
    await api.request(Method.POST, Path.v3.rooms[room_id].unban, {"user_id": user_id})


async def put_state(
    api: AppServiceAPI, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
) -> None:
    await api.request(Method.PUT, Path.v3.rooms[room_id].state[event_type][state_key], content)


async def send_notice(api: AppServiceAPI, room_id: str, text: str, txn_id: str) -> None:
    """An m.notice; ``txn_id`` is stable across retries so a resent notice is not doubled."""
    content = {"msgtype": "m.notice", "body": text}
    await api.request(Method.PUT, Path.v3.rooms[room_id].send["m.room.message"][txn_id], content)


async def present_members(api: AppServiceAPI, room_id: str) -> list[str]:
    """Who is in the room or invited to it, as the homeserver knows (``api`` must be in it)."""
    resp = await api.request(Method.GET, Path.v3.rooms[room_id].members)
    return [
        str(ev.get("state_key"))
        for ev in resp.get("chunk", [])
        if (ev.get("content") or {}).get("membership") in ("join", "invite")
    ]


async def default_room_version(api: AppServiceAPI) -> str:
    """The room version the homeserver gives new rooms ("" when it does not say)."""
    caps = await api.request(Method.GET, Path.v3.capabilities)
    versions = (caps.get("capabilities") or {}).get("m.room_versions") or {}
    return str(versions.get("default") or "")


async def joined_rooms(api: AppServiceAPI) -> set[str]:
    resp = await api.request(Method.GET, Path.v3.joined_rooms)
    return set(resp.get("joined_rooms", []))


async def room_state(api: AppServiceAPI, room_id: str) -> list[dict[str, Any]]:
    resp = await api.request(Method.GET, Path.v3.rooms[room_id].state)
    return resp if isinstance(resp, list) else []


async def set_displayname(api: AppServiceAPI, user_id: str, displayname: str) -> None:
    await api.request(
        Method.PUT, Path.v3.profile[user_id].displayname, {"displayname": displayname}
    )


# --- the homeserver client ------------------------------------------------------------------


def appservice_api(
    config: Config, state_store: ASStateStore, session: ClientSession, retries: int = 2
) -> AppServiceAPI:
    """The appservice's request API (bot and puppets) over ``session``."""
    return AppServiceAPI(
        base_url=config.homeserver.address,
        bot_mxid=UserID(config.bot_mxid),
        log=logging.getLogger("letta_appservice.matrix"),
        token=config.appservice.as_token,
        state_store=state_store,
        client_session=session,
        default_retry_count=retries,
    )


# --- 429 M_LIMIT_EXCEEDED --------------------------------------------------------------------


class RateLimitMiddleware:
    """aiohttp client middleware for the homeserver session: on 429 wait ``retry_after_ms``
    (or the Retry-After header, or an exponential default) and send the request again.

    mautrix does not retry 429s and drops the response body that says how long to wait, so it
    is done here, below every caller. Waits longer than ``max_wait`` are not waited for: the
    429 goes back to the caller, whose pass fails and retries later.
    """

    def __init__(
        self, *, max_retries: int = 5, max_wait: float = 60.0, default_wait: float = 1.0
    ) -> None:
        self.max_retries = max_retries
        self.max_wait = max_wait
        self.default_wait = default_wait
        self.waited = 0  # 429s waited out (for tests and metrics)

    async def __call__(self, request: ClientRequest, handler: ClientHandlerType) -> ClientResponse:
        for attempt in range(self.max_retries + 1):
            response = await handler(request)
            if response.status != 429 or attempt == self.max_retries:
                return response
            wait = await self._wait_for(response, self.default_wait * 2**attempt)
            if wait > self.max_wait:
                return response
            response.release()
            self.waited += 1
            log.warning(
                "Homeserver rate-limited %s %s; retrying in %.1f s",
                request.method,
                request.url.path,
                wait,
            )
            await asyncio.sleep(wait)
        raise AssertionError("unreachable")

    @staticmethod
    async def _wait_for(response: ClientResponse, default: float) -> float:
        # The body stays readable for the caller after read() (aiohttp keeps it).
        try:
            body = json.loads(await response.read())
            retry_ms = body.get("retry_after_ms") if isinstance(body, dict) else None
            if isinstance(retry_ms, int | float) and retry_ms >= 0:
                return retry_ms / 1000
        except ValueError:
            pass
        header = response.headers.get("Retry-After", "")
        try:
            return max(float(header), 0.0)
        except ValueError:
            return default
