"""Agent puppets as Matrix users: one lock per puppet, registration done once."""

from __future__ import annotations

import asyncio
import weakref

from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.appservice.state_store import ASStateStore
from mautrix.errors import MUserInUse
from mautrix.types import UserID

from . import rooms


class Puppets:
    """Access to puppets as Matrix users.

    ``lock(mxid)`` serialises everything done to one puppet (creating its room, renaming it,
    answering as it), so two callers never create the same puppet's room twice. ``api()`` is
    the light per-user request API (an IntentAPI per puppet would be too heavy at 10,000
    agents).
    """

    def __init__(self, bot_api: AppServiceAPI, state_store: ASStateStore) -> None:
        self._bot_api = bot_api
        self._state_store = state_store
        self._locks: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()

    def lock(self, mxid: str) -> asyncio.Lock:
        """The lock of one puppet; it lives as long as someone holds a reference to it."""
        lock = self._locks.get(mxid)
        if lock is None:
            lock = asyncio.Lock()
            self._locks[mxid] = lock
        return lock

    def api(self, mxid: str) -> AppServiceAPI:
        """Raw request API acting as the puppet (no hidden registration or join requests)."""
        return self._bot_api.user(UserID(mxid))

    async def ensure_registered(self, mxid: str) -> bool:
        """Register the puppet unless the state store knows it is; True if a request was made.
        M_USER_IN_USE means it exists already (the store was behind), which is fine."""
        if await self._state_store.is_registered(UserID(mxid)):
            return False
        localpart = mxid[1:].split(":", 1)[0]
        body = {
            "username": localpart,
            "type": "m.login.application_service",
            "inhibit_login": True,
        }
        try:
            await self.api(mxid).request(
                Method.POST, Path.v3.register, body, query_params={"kind": "user"}
            )
        except MUserInUse:
            pass
        await self._state_store.registered(UserID(mxid))
        return True

    async def set_displayname(self, mxid: str, displayname: str) -> None:
        """One PUT, without mautrix's "is it already set?" GET: callers compare with the value
        they last set (the agent row), which is cheaper and survives restarts."""
        await rooms.set_displayname(self.api(mxid), mxid, displayname)
