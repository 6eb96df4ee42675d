"""mautrix's state store, handed only what its tables can hold.

Member profiles come from any member of any room (remote users included) and from the
homeserver's answers: a display name that is a number, or a NUL character in a name or user id
(PostgreSQL's TEXT refuses it), made every later write for that person fail. The event was set
aside with a traceback, and on PostgreSQL the person could never be answered: the display-name
lookup before each turn stores the profile too. A name that cannot be stored is kept as none;
a user id that cannot be stored is not stored at all (nobody real has it).
"""

from __future__ import annotations

from mautrix.appservice.state_store.asyncpg import PgASStateStore
from mautrix.types import Member, Membership, MemberStateEventContent, RoomID, UserID

Profile = Member | MemberStateEventContent


def storable_text(value: object) -> str | None:
    """``value`` when it is a string the databases can hold, else None."""
    return value if isinstance(value, str) and "\x00" not in value else None


def _profile(member: Profile) -> Member:
    return Member(
        membership=member.membership,
        displayname=storable_text(member.displayname),
        avatar_url=storable_text(member.avatar_url),  # type: ignore[arg-type]
    )


class StateStore(PgASStateStore):
    async def get_member(self, room_id: RoomID, user_id: UserID) -> Member | None:
        # A member event's previous membership is looked up by its state key, whatever it holds.
        if storable_text(user_id) is None:
            return None
        return await super().get_member(room_id, user_id)

    async def set_member(self, room_id: RoomID, user_id: UserID, member: Profile) -> None:
        if storable_text(user_id) is not None:
            await super().set_member(room_id, user_id, _profile(member))

    async def set_membership(
        self, room_id: RoomID, user_id: UserID, membership: Membership
    ) -> None:
        if storable_text(user_id) is not None:
            await super().set_membership(room_id, user_id, membership)

    async def set_members(
        self,
        room_id: RoomID,
        members: dict[UserID, Profile],
        only_membership: Membership | None = None,
    ) -> None:
        kept = {u: _profile(m) for u, m in members.items() if storable_text(u) is not None}
        await super().set_members(room_id, kept, only_membership)  # type: ignore[arg-type]
