"""Exactly once across kill -9: the appservice runs as a real process and is killed mid-turn."""

from __future__ import annotations

import asyncio
import inspect
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest_asyncio

from letta_appservice.chat.content import otid
from letta_appservice.matrix.ids import agent_alias, agent_mxid
from tests.harness.bridge_process import BridgeProcess
from tests.harness.config import INSTANCES, SERVER_NAME
from tests.harness.conversation import replies_seen, text_of
from tests.harness.events import reply_to
from tests.harness.fake_letta import FakeLetta
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixError, MatrixUser

TEMPLATE = INSTANCES["letta"].username_template


@pytest_asyncio.fixture
async def bridge_process(
    homeserver: Homeserver, fake_letta: FakeLetta, tmp_path: Path
) -> AsyncIterator[BridgeProcess]:
    data = INSTANCES["letta"].config_data(
        homeserver.url, f"sqlite:{tmp_path / 'bridge.db'}", fake_letta.url
    )
    data["logging"] = {"level": "INFO"}
    process = BridgeProcess(tmp_path, data)
    try:
        yield process
    finally:
        await process.kill(signal.SIGTERM)


async def until(check: Callable[[], Any], what: str, timeout: float = 60) -> Any:
    """Poll ``check`` (plain or async; a Matrix error counts as "not yet") until truthy."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = check()
        if inspect.isawaitable(result):
            try:
                result = await result
            except MatrixError:
                result = None
        if result:
            return result
        await asyncio.sleep(0.05)
    raise TimeoutError(what)


async def test_kill_9_mid_turn_or_after_a_lost_done_mark_answers_exactly_once(
    bridge_process: BridgeProcess, fake_letta: FakeLetta, admin_user: MatrixUser
) -> None:
    agent = fake_letta.add_agent("Crashy", delay=60)
    puppet = agent_mxid(TEMPLATE, SERVER_NAME, agent.id)
    await bridge_process.start()  # its start-up pass creates the agent's room
    alias = agent_alias(TEMPLATE, SERVER_NAME, agent.id)
    room = await until(lambda: admin_user.resolve_alias(alias), "the agent's room")
    await until(lambda: admin_user.join(room), "joining the agent's room")  # once invited

    # 1. Killed while Letta works on the message.
    asked = await admin_user.send_text(room, "survive this")
    await fake_letta.wait_for_in_flight(agent.id, timeout=30)
    await bridge_process.kill()
    for turn in list(fake_letta.turns):  # the dead process's request ends on Letta's side
        turn.cancel.set()
    await fake_letta.wait_for_messages(1)
    agent.delay = 0
    await bridge_process.start()
    await admin_user.wait_for_event(room, reply_to(puppet, asked), timeout=60)

    # 2. Killed after the answer was posted, its done mark lost (forced: the event is done by
    # the time the reply is seen, so the row is put back as a crash before the mark leaves it).
    # A crash between storing the answer and posting it: tests/test_turn_guarantees.py.
    asked_again = await admin_user.send_text(room, "and this")
    reply = await admin_user.wait_for_event(room, reply_to(puppet, asked_again), timeout=60)
    in_inbox = "SELECT 1 FROM inbox WHERE event_id=?"
    await until(lambda: bridge_process.query(in_inbox, reply["event_id"]), "reply pushed back")
    await bridge_process.kill()
    bridge_process.query(
        "UPDATE inbox SET state='processing' WHERE event_id IN (?, ?)", asked, asked_again
    )
    await bridge_process.start()
    last = await admin_user.send_text(room, "last")
    await admin_user.wait_for_event(room, reply_to(puppet, last), timeout=60)

    assert len(replies_seen(admin_user, room, puppet, asked)) == 1
    assert len(replies_seen(admin_user, room, puppet, asked_again)) == 1
    texts = [text_of(m) for m in fake_letta.message_log]
    assert texts == ["survive this", "survive this", "and this", "last"]
    # The killed request and the one after the restart carry the same otid: Letta can tell.
    assert {m.otid for m in fake_letta.message_log[:2]} == {otid(asked, agent.id)}
    done = "SELECT COUNT(*) FROM inbox WHERE state='done' AND event_id IN (?, ?, ?)"
    await until(lambda: bridge_process.query(done, asked, asked_again, last) == [(3,)], "done")
