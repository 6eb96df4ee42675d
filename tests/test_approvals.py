"""People in control from the chat, against the real Letta 0.16.8: a tool that needs approval
shows a card in the room, decided with ✅ / ❌ (or a reply) by the person who asked; 🛑 stops
an answer and the agent takes the next message."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import pytest

from letta_appservice.app import App
from letta_appservice.chat.conversations import GONE
from tests.harness.conversation import handled, new_user
from tests.harness.events import reply_to
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser
from tests.harness.real_scene import WAIT, Event, Scene, echo_of, latest_text, replies
from tests.harness.synapse import fresh_localpart

pytestmark = pytest.mark.real_letta
log = logging.getLogger(__name__)
APPROVE, DENY, STOP = "\u2705", "\u274c", "\U0001f6d1"


def dice_tool(name: str) -> str:
    return f'''
def {name}(sides: int) -> str:
    """Roll a die.

    Args:
        sides: how many sides the die has

    Returns:
        str: what was rolled
    """
    return "rolled 4 on a d" + str(sides)
'''


def nap_tool(name: str) -> str:
    return f'''
def {name}(seconds: int) -> str:
    """Rest a while.

    Args:
        seconds: how long

    Returns:
        str: how it went
    """
    import time

    time.sleep(seconds)
    return "rested"
'''


class Approval:
    """An agent with a dice tool that needs approval, its room, and a plain user in it who
    asks for a roll."""

    def __init__(
        self, app: App, scene: Scene, homeserver: Homeserver, agent_id: str, tool: str, room: str
    ) -> None:
        self.app, self.scene, self.homeserver = app, scene, homeserver
        self.agent_id, self.tool, self.room = agent_id, tool, room
        self.puppet = scene.bridge.mxid(agent_id)
        self.asker: MatrixUser

    async def ask(self, sides: int = 6) -> tuple[str, Event]:
        """The asker's message, and the card the agent's puppet answers it with."""
        text = f"Roll for me: CALL {self.tool} {json.dumps({'sides': sides})}"
        asked = await self.asker.send_text(self.room, text)
        card = await self.asker.wait_for_event(
            self.room, reply_to(self.puppet, asked, "m.notice"), timeout=WAIT
        )
        return asked, card

    async def member(self, name: str) -> MatrixUser:
        """A plain user of the bridge, invited into the room by the admin."""
        user = await new_user(self.homeserver, name)
        await self.scene.admin.invite(self.room, user.mxid)
        await user.join(self.room)
        return user

    async def react(self, user: MatrixUser, event_id: str, key: str) -> str:
        relates = {"rel_type": "m.annotation", "event_id": event_id, "key": key}
        return await user.send_event(self.room, "m.reaction", {"m.relates_to": relates})

    async def card_says(self, card: Event, words: str) -> None:
        """Wait until the card, as a client shows it (edited), has ``words``."""
        await self.asker.wait_for_event(
            self.room, lambda _e: words in latest_text(self.asker, self.room, card), timeout=WAIT
        )

    async def answer(self, asked: str) -> Event:
        return await self.asker.wait_for_event(
            self.room, reply_to(self.puppet, asked), timeout=WAIT
        )


async def approval_scene(
    scene: Scene, homeserver: Homeserver, database: str, streaming: bool = False, **bridge: Any
) -> Approval:
    agent_id = await scene.agent("Gambler")
    tool = await scene.letta.add_tool(agent_id, dice_tool(fresh_localpart("roll")))
    await scene.letta.require_approval(agent_id, tool)
    app = await scene.start(database, bridge=bridge, letta={"streaming": streaming})
    room = await scene.room(agent_id)
    a = Approval(app, scene, homeserver, agent_id, tool, room)
    a.asker = await a.member("asker")
    return a


def tool_result(answer: Event) -> Any:
    """What the tool gave Letta, as the fake LLM repeats it ("tool result: <json>")."""
    body = str(answer["content"]["body"])
    assert body.startswith("tool result: "), body
    return json.loads(body.removeprefix("tool result: "))


def reactions_on(user: MatrixUser, room: str, sender: str, event_id: str) -> set[str]:
    return {
        e["content"]["m.relates_to"]["key"]
        for e in user.events_seen(room)
        if e["type"] == "m.reaction"
        and e["sender"] == sender
        and e["content"]["m.relates_to"]["event_id"] == event_id
    }


async def test_a_tool_needing_approval_shows_a_card_and_the_askers_tick_runs_it(
    scene: Scene, homeserver: Homeserver, sqlite_url: str
) -> None:
    a = await approval_scene(scene, homeserver, sqlite_url)
    asked, card = await a.ask(6)
    body = card["content"]["body"]
    assert f"wants to run {a.tool}" in body
    assert '"sides": 6' in body  # the arguments, as code
    assert a.asker.mxid in body  # who may decide
    assert '<pre><code>{\n  "sides": 6\n}</code></pre>' in card["content"]["formatted_body"]
    await a.asker.wait_for_event(
        a.room,
        lambda _e: reactions_on(a.asker, a.room, a.puppet, card["event_id"]) == {APPROVE, DENY},
        timeout=WAIT,
    )
    assert await scene.letta.pending_approval(a.agent_id) is not None

    await a.react(a.asker, card["event_id"], APPROVE)
    answer = await a.answer(asked)
    assert tool_result(answer)["message"] == "rolled 4 on a d6"
    await a.card_says(card, f"Approved by {a.asker.mxid}")
    assert await scene.letta.pending_approval(a.agent_id) is None
    # The agent is free again: the next message is answered as usual.
    after = await a.asker.send_text(a.room, "Thanks!")
    reply = await a.answer(after)
    assert reply["content"]["body"].endswith("\nThanks!")


async def test_a_deny_reply_with_a_reason_tells_the_agent(
    scene: Scene, homeserver: Homeserver, sqlite_url: str
) -> None:
    a = await approval_scene(scene, homeserver, sqlite_url, streaming=True)
    asked, card = await a.ask(20)
    await a.asker.send_text(a.room, "deny not with my money", reply_to=card["event_id"])
    answer = await a.answer(asked)  # streamed: posted, then edited as it grows
    # The fake LLM repeats the tool result Letta gave it: the denial and its reason.
    await a.asker.wait_for_event(
        a.room,
        lambda _e: "not with my money" in latest_text(a.asker, a.room, answer),
        timeout=WAIT,
    )
    said = latest_text(a.asker, a.room, answer)
    assert said.startswith("tool result:") and "rolled" not in said
    await a.card_says(card, f"Denied by {a.asker.mxid}")
    assert await scene.letta.pending_approval(a.agent_id) is None


async def test_a_tick_by_someone_else_changes_nothing(
    scene: Scene, homeserver: Homeserver, sqlite_url: str
) -> None:
    a = await approval_scene(scene, homeserver, sqlite_url)
    asked, card = await a.ask(8)
    bystander = await a.member("bystander")
    await a.react(bystander, card["event_id"], APPROVE)
    notice = await a.asker.wait_for_event(
        a.room,
        lambda e: e["sender"] == a.puppet and "may not decide" in e["content"].get("body", ""),
        timeout=WAIT,
    )
    assert bystander.mxid in notice["content"]["body"]
    await handled(a.app, await a.react(bystander, card["event_id"], DENY), timeout=WAIT)
    # Nothing changed: Letta still waits, no answer, the card is as it was, one notice only.
    assert await scene.letta.pending_approval(a.agent_id) is not None
    assert replies(a.asker, a.room, a.puppet, asked, "m.text") == []
    assert latest_text(a.asker, a.room, card) == card["content"]["body"]
    said = [e for e in a.asker.events_seen(a.room) if "may not decide" in str(e["content"])]
    assert len(said) == 1
    # The asker still decides.
    await a.react(a.asker, card["event_id"], APPROVE)
    assert tool_result(await a.answer(asked))["message"] == "rolled 4 on a d8"


async def test_a_card_survives_a_bridge_restart(
    database_url: str, scene: Scene, homeserver: Homeserver
) -> None:
    a = await approval_scene(scene, homeserver, database_url)
    asked, card = await a.ask(12)
    await scene.apps.close()
    await scene.start(database_url)
    await a.react(a.asker, card["event_id"], APPROVE)
    answer = await a.answer(asked)
    assert tool_result(answer)["message"] == "rolled 4 on a d12"


async def test_a_stop_sign_stops_a_slow_streamed_answer_and_the_next_message_is_answered(
    scene: Scene, homeserver: Homeserver, sqlite_url: str
) -> None:
    agent_id = await scene.agent("Sleeper")
    tool = await scene.letta.add_tool(agent_id, nap_tool(fresh_localpart("nap")))
    bridge = {"thinking_placeholder": True}
    await scene.start(sqlite_url, letta={"streaming": True}, bridge=bridge)
    room = await scene.room(agent_id)
    user = await new_user(homeserver, "napper")
    await scene.admin.invite(room, user.mxid)
    await user.join(room)
    puppet = scene.bridge.mxid(agent_id)
    nap = f"Nap: CALL {tool} " + json.dumps({"seconds": 40})

    async def stop(slow: str, on: str, placeholder: Event) -> None:
        """🛑 on ``on``: the answer to ``slow`` (its placeholder) says it was stopped."""
        relates = {"rel_type": "m.annotation", "event_id": on, "key": STOP}
        stop_at = time.monotonic()
        await user.send_event(room, "m.reaction", {"m.relates_to": relates})
        await user.wait_for_event(
            room, lambda _e: "Stopped by" in latest_text(user, room, placeholder), timeout=WAIT
        )
        log.warning("🛑 to the stopped answer: %.2f s", time.monotonic() - stop_at)
        assert user.mxid in latest_text(user, room, placeholder)
        assert replies(user, room, puppet, slow) == [placeholder]  # no more of that answer

    async def answered(asked: str, text: str) -> None:
        """The answer to ``asked`` echoes ``text`` (in its first message, or the placeholder
        that became it)."""

        def done(_e: Event) -> bool:
            said = replies(user, room, puppet, asked)
            return bool(said) and latest_text(user, room, said[0]).endswith(text)

        await user.wait_for_event(room, done, timeout=WAIT)

    # 🛑 on the agent's pending answer; the message queued behind it is answered.
    slow = await user.send_text(room, nap)
    queued = await user.send_text(room, "And after the nap?")
    thinking = await user.wait_for_event(room, reply_to(puppet, slow, "m.notice"), timeout=WAIT)
    assert thinking["content"]["body"] == "thinking…"
    await stop(slow, thinking["event_id"], thinking)
    await answered(queued, "\nAnd after the nap?")
    # 🛑 on one's own message works the same.
    slow = await user.send_text(room, nap)
    thinking = await user.wait_for_event(room, reply_to(puppet, slow, "m.notice"), timeout=WAIT)
    await stop(slow, slow, thinking)
    after = await user.send_text(room, "Awake?")
    await answered(after, "\nAwake?")


async def test_a_thinking_placeholder_becomes_the_answer(scene: Scene, sqlite_url: str) -> None:
    agent_id = await scene.agent("Thinker")
    await scene.start(sqlite_url, bridge={"thinking_placeholder": True})
    room = await scene.room(agent_id)
    puppet = scene.bridge.mxid(agent_id)
    text = "Slowly, please. SLEEP 4"
    asked = await scene.admin.send_text(room, text)
    placeholder = await scene.admin.wait_for_event(
        room, reply_to(puppet, asked, "m.notice"), timeout=WAIT
    )
    assert placeholder["content"]["body"] == "thinking…"
    expected = echo_of(text, "Thinker")
    await scene.admin.wait_for_event(
        room, lambda _e: latest_text(scene.admin, room, placeholder) == expected, timeout=WAIT
    )
    assert replies(scene.admin, room, puppet, asked) == [placeholder]  # one message, edited


async def test_a_card_decided_in_letta_meanwhile_says_so_instead_of_failing(
    scene: Scene, homeserver: Homeserver, sqlite_url: str
) -> None:
    a = await approval_scene(scene, homeserver, sqlite_url)
    asked, card = await a.ask(4)
    pending = await scene.letta.pending_approval(a.agent_id)
    call_id = pending["tool_call"]["tool_call_id"]
    approval = {"type": "approval", "tool_call_id": call_id, "approve": True}
    body = {"messages": [{"type": "approval", "approvals": [approval]}]}
    where = f"/v1/conversations/{pending['conversation_id']}"  # the room's conversation
    await scene.letta.call("POST", f"{where}/messages", {**body, "streaming": False})
    await a.react(a.asker, card["event_id"], APPROVE)
    await a.card_says(card, "Already decided in Letta")
    assert replies(a.asker, a.room, a.puppet, asked, "m.text") == []
    assert "may not" not in str(a.asker.events_seen(a.room))


async def test_a_card_whose_conversation_was_deleted_in_letta_says_so_and_the_room_goes_on(
    scene: Scene, homeserver: Homeserver, sqlite_url: str
) -> None:
    a = await approval_scene(scene, homeserver, sqlite_url)
    _, card = await a.ask(8)
    pending = await scene.letta.pending_approval(a.agent_id)
    await scene.letta.call("DELETE", f"/v1/conversations/{pending['conversation_id']}")
    await a.react(a.asker, card["event_id"], APPROVE)
    # Letta has no call waiting any more: the card says nothing was sent.
    await a.card_says(card, "Already decided in Letta")
    # The room's next message goes to a new conversation, without the deleted one's words.
    after = await a.asker.send_text(a.room, "Anyone there? RECALL")
    reply = await a.answer(after)
    assert "Anyone there?" in reply["content"]["body"]
    assert "Roll for me" not in reply["content"]["body"]
    gone = await a.asker.wait_for_event(
        a.room, reply_to(a.puppet, after, "m.notice"), timeout=WAIT
    )
    assert gone["content"]["body"] == GONE
