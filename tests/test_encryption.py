"""The bridge has no end-to-end encryption: what people meet instead of silence (real Synapse,
fake Letta, seen by real Matrix users)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from letta_appservice.app import App
from letta_appservice.chat import encryption as e2ee
from letta_appservice.db.room import RoomStore
from tests.harness.apps import Apps
from tests.harness.config import INSTANCES, SERVER_NAME
from tests.harness.conversation import dm_with, enter, new_user, provision
from tests.harness.events import Event, by, member_is
from tests.harness.fake_letta import FakeLetta
from tests.harness.homeserver import Homeserver, on_tuwunel
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import eventually, joined_rooms_of, wait_until_left
from tests.harness.synapse import SynapseServer, fresh_localpart

ALGORITHM = {"algorithm": "m.megolm.v1.aes-sha2"}
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": ALGORITHM}
CIPHERTEXT = {
    "algorithm": "m.megolm.v1.aes-sha2",
    "ciphertext": "AwgAEnACgAkLmt6qF84IK++J7UDH2Za1YVchHyprqTqsg",
    "device_id": "RJYKSTBOIE",
    "sender_key": "IlRMeOPX2e0MurIyfWEucYBRVOEEUMrOHqn/8mLqMjA",
    "session_id": "X3lUlvLELLYxeTx4yOVu6UDpasGEVO0Jbu+QFnm0cKQ",
}


def notice_from(mxid: str, text: str) -> Any:
    def match(e: Event) -> bool:
        return by(mxid, "m.notice")(e) and text in e["content"]["body"]

    return match


async def test_invites_into_encrypted_rooms_are_declined_with_the_reason(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver
) -> None:
    alice = await new_user(homeserver, "alice")
    app = await apps.start()
    [alpha] = await provision(app, fake_letta, "Alpha")
    bot = app.config.bot_mxid
    group = await alice.create_room(
        preset="private_chat", name="Secret", invite=[alpha.mxid], initial_state=[ENCRYPTION]
    )
    dm = await alice.create_room(
        preset="trusted_private_chat", is_direct=True, invite=[bot], initial_state=[ENCRYPTION]
    )
    for room, mxid in ((group, alpha.mxid), (dm, bot)):
        declined = await alice.wait_for_event(room, member_is(mxid, "leave"))
        # Never joined; the reason travels with the decline (Tuwunel 1.4 drops it:
        # docs/homeservers.md).
        reason = declined["content"].get("reason")
        assert reason == e2ee.DECLINED or (on_tuwunel() and reason is None)
    assert await RoomStore(app.db).get(group) is None
    assert await app.commands.services.rooms.management_room(alice.mxid) is None
    await alice.close()


async def test_encryption_turned_on_later(
    apps: Apps, fake_letta: FakeLetta, homeserver: Homeserver, admin_user: MatrixUser
) -> None:
    alice = await new_user(homeserver, "alice")
    app = await apps.start()
    [alpha] = await provision(app, fake_letta, "Alpha")

    # In a DM the puppet says why and leaves; the bridge forgets the room.
    dm = await dm_with(alice, alpha.mxid)
    await alice.send_state(dm, "m.room.encryption", "", ALGORITHM)
    await alice.wait_for_event(dm, notice_from(alpha.mxid, e2ee.LEAVING))
    await wait_until_left(app, alpha.mxid, dm)
    await eventually(lambda: _forgotten(app, dm))  # the bookkeeping follows the leave

    # In its own room the agent stays, and says how to get a readable room back.
    await enter(app, admin_user, alpha.room)
    await admin_user.send_state(alpha.room, "m.room.encryption", "", ALGORITHM)
    told = await admin_user.wait_for_event(alpha.room, notice_from(alpha.mxid, "Encryption was"))
    assert "Alpha will not answer here any more" in told["content"]["body"]
    assert told["content"]["body"].endswith("!letta reset Alpha")
    assert alpha.room in await joined_rooms_of(app, alpha.mxid)

    # Encrypted messages get one notice per person and room, then nothing: a command behind
    # them in the room's queue shows both were handled.
    await admin_user.send_event(alpha.room, "m.room.encrypted", CIPHERTEXT)
    await admin_user.send_event(alpha.room, "m.room.encrypted", CIPHERTEXT)
    await admin_user.wait_for_event(alpha.room, notice_from(alpha.mxid, "cannot read"))
    await admin_user.send_text(alpha.room, "!letta version")
    await admin_user.wait_for_event(alpha.room, by(app.config.bot_mxid, "m.notice"))
    unreadable = [
        e
        for e in admin_user.events_seen(alpha.room)
        if notice_from(alpha.mxid, "your message is end-to-end encrypted")(e)
    ]
    assert len(unreadable) == 1
    assert unreadable[0]["content"]["body"].startswith(admin_user.mxid)
    assert fake_letta.message_log == []
    await alice.close()


async def test_a_homeserver_that_encrypts_everything(
    tmp_path: Path, apps: Apps, fake_letta: FakeLetta, caplog: Any
) -> None:
    """This Synapse encrypts every new room and sends invites without encryption in their
    stripped state (a homeserver may send none at all): the operator is told that agent rooms
    came out encrypted, and an invited agent finds out after joining, says why and leaves."""
    INSTANCES["lab"].write_registration(tmp_path / "reg.yaml")
    hs = await SynapseServer.start(
        tmp_path / "hs",
        [tmp_path / "reg.yaml"],
        SERVER_NAME,
        extra={
            "room_prejoin_state": {"disable_default_event_types": True},
            "encryption_enabled_by_default_for_room_type": "all",
        },
    )
    alice: MatrixUser | None = None
    try:
        app = await apps.start(
            f"sqlite:{tmp_path / 'e2ee.db'}", instance="lab", homeserver={"address": hs.url}
        )
        [alpha] = await provision(app, fake_letta, "Alpha")
        async with asyncio.timeout(30):  # the room's encryption event reaches the bridge
            while True:
                if f"The homeserver encrypted {alpha.room}" in caplog.text:
                    break
                await asyncio.sleep(0.1)
        assert "encryption_enabled_by_default_for_room_type" in caplog.text
        bot = app.config.bot_mxid
        alice = await hs.register_user(fresh_localpart("alice"))
        room = await alice.create_room(preset="private_chat", invite=[alpha.mxid, bot])
        for mxid in (alpha.mxid, bot):
            await alice.wait_for_event(room, notice_from(mxid, e2ee.DECLINED))
            await alice.wait_for_event(room, member_is(mxid, "leave"))
        assert await RoomStore(app.db).get(room) is None
        assert await app.commands.services.rooms.management_room(alice.mxid) is None
    finally:
        if alice is not None:
            await alice.close()
        await apps.close()  # before its homeserver goes
        await hs.stop()


async def _forgotten(app: App, room_id: str) -> bool:
    return await RoomStore(app.db).get(room_id) is None
