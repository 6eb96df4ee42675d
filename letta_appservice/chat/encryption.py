"""End-to-end encryption, which the bridge does not do: it says so instead of going silent.
Invites into encrypted rooms are declined with the reason, a room that turns encryption on is
told (and left, unless it is an agent room), and someone writing encrypted messages hears why
nobody answers, once per room."""

from __future__ import annotations

from mautrix.api import Method, Path
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import StateEvent

from ..matrix import rooms as mx

ENCRYPTION, ENCRYPTED = "m.room.encryption", "m.room.encrypted"
DECLINED = (
    "This bridge cannot read end-to-end encrypted rooms, so its agents do not join them. "
    "Invite them to a room without encryption."
)
LEAVING = (
    "Encryption was turned on in this room. This bridge cannot read encrypted messages, so "
    "it leaves; talk to its agents in a room without encryption."
)
AGENT_ROOM = (
    "Encryption was turned on in this room. This bridge cannot read encrypted messages, so "
    "{name} will not answer here any more. A bridge admin can give it a new room: "
    "{prefix} reset {name}"
)
UNREADABLE = (
    "{user}: your message is end-to-end encrypted, which this bridge cannot read, so it was "
    "not passed on. Talk to the agents in a room without encryption."
)


def invite_says_encrypted(evt: StateEvent) -> bool:
    """Whether the invite's stripped room state shows encryption. False proves nothing (a
    homeserver may send no stripped state, or leave encryption out of it): the room itself
    is asked after joining."""
    state = (evt.unsigned.invite_room_state if evt.unsigned else None) or []
    return any(str(ev.type) == ENCRYPTION for ev in state)


async def is_encrypted(api: AppServiceAPI, room_id: str) -> bool:
    """Asks the homeserver (``api`` must be a member of the room)."""
    try:
        await api.request(Method.GET, Path.v3.rooms[room_id].state[ENCRYPTION])
    except MatrixRequestError as e:
        if e.http_status == 404:
            return False
        raise
    return True


async def tell(api: AppServiceAPI, room_id: str, text: str, because_of: str) -> None:
    """A notice; its txn id comes from the event it answers, so a retry does not repeat it."""
    await mx.send_notice(api, room_id, text, f"encryption-{because_of}")
