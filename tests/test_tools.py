"""Agents act in Matrix through their tools, against the real Letta 0.16.8 (its fake LLM calls a
tool when a message says `CALL <tool> <json>`; each tool turn starts Letta's sandbox, ~3 s),
a real homeserver and the appservice: posting, reading, direct messages, agents talking to
agents, the hop limit, and what the tool API refuses."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from letta_appservice.app import App
from letta_appservice.chat.loops import MARKER
from letta_appservice.letta import LettaError
from tests.harness.apps import Apps, Bridge
from tests.harness.events import member_is, reply_to
from tests.harness.homeserver import Homeserver
from tests.harness.matrix_user import MatrixUser
from tests.harness.observe import eventually
from tests.harness.real_letta import LettaAdmin, RealLetta
from tests.harness.synapse import fresh_localpart

pytestmark = pytest.mark.real_letta

Event = dict[str, Any]
WAIT = 180  # tool turns start a sandbox each; a loaded 2-core machine is slow
TOOLS = ("matrix_list_rooms", "matrix_read_room", "matrix_send_message")


def call(tool: str, **args: Any) -> str:
    return f"CALL {tool} {json.dumps(args)}"


def from_tool(sender: str, tool: str) -> Callable[[Event], bool]:
    return lambda e: (
        e["type"] == "m.room.message"
        and e["sender"] == sender
        and e["content"][MARKER]["tool"] == tool
    )


class Stage:
    """Two agents, A and B, with their tools, on one bridge; the admin in both rooms."""

    def __init__(self, app: App, bridge: Bridge, letta: LettaAdmin, admin: MatrixUser) -> None:
        self.app, self.bridge, self.letta, self.admin = app, bridge, letta, admin
        self.ids: dict[str, str] = {}  # "Alpha" -> agent id
        self.names: dict[str, str] = {}  # "Alpha" -> its name in Letta
        self.rooms: dict[str, str] = {}

    def mxid(self, name: str) -> str:
        return self.bridge.mxid(self.ids[name])

    async def enter(self, name: str) -> str:
        """The admin in the agent's room (the bridge invited them)."""
        alias = self.bridge.alias(self.ids[name])
        await eventually(lambda: self.admin.resolve_alias(alias), WAIT)
        room = await self.admin.join(alias)
        self.rooms[name] = room
        return room

    async def ask(self, name: str, text: str) -> Event:
        """The admin writes in the agent's room; the agent's answer (after its tool turn)."""
        room = self.rooms[name]
        asked = await self.admin.send_text(room, text)
        return await self.admin.wait_for_event(room, reply_to(self.mxid(name), asked, None), WAIT)

    async def shared_room(self, *agents: str, name: str = "Shared") -> str:
        """A room of the admin's with these agents' puppets joined."""
        room = await self.admin.create_room(name=name, preset="private_chat")
        for agent in agents:
            who = self.mxid(agent)
            await self.admin.invite(room, who)
            await self.admin.wait_for_event(room, member_is(who, "join"), WAIT)
        return room

    async def secret(self, name: str) -> str:
        agent = await self.letta.call(
            "GET", f"/v1/agents/{self.ids[name]}", include="agent.secrets"
        )
        values = {s["key"]: s["value"] for s in agent["secrets"]}
        return str(values["LETTA_APPSERVICE_TOOL_SECRET"])


@pytest_asyncio.fixture
async def stage(
    homeserver: Homeserver, real_letta: RealLetta, admin_user: MatrixUser, sqlite_url: str
) -> AsyncIterator[Stage]:
    letta = LettaAdmin(real_letta.url)
    tag = fresh_localpart("tools")
    bridge = Bridge()
    apps = Apps(homeserver.url, real_letta.url)
    try:
        names = {n: f"{n} {tag}" for n in ("Alpha", "Beta")}
        ids = {n: await letta.create_agent(full, tags=[tag]) for n, full in names.items()}
        app = await apps.start(
            sqlite_url,
            namespace=bridge,
            first_pass=True,
            letta={"filter_tags": [tag]},
            tools={"agents": "all", "max_hops": 2, "talk_wait": 120},
        )
        stage = Stage(app, bridge, letta, admin_user)
        stage.ids, stage.names = ids, names
        for name in ids:
            assert set(TOOLS) <= set(await letta.tools(ids[name]))
            await stage.enter(name)
        yield stage
    finally:
        await apps.close()
        await letta.close()


async def test_an_agent_posts_into_a_shared_room_when_asked(stage: Stage) -> None:
    shared = await stage.shared_room("Alpha")
    answer = await stage.ask(
        "Alpha", call("matrix_send_message", room=shared, text="**Lunch** is ready")
    )
    posted = await stage.admin.wait_for_event(
        shared, from_tool(stage.mxid("Alpha"), "matrix_send_message"), WAIT
    )
    assert posted["content"]["body"] == "**Lunch** is ready"
    assert "<strong>Lunch</strong>" in posted["content"]["formatted_body"]
    assert posted["event_id"] in answer["content"]["body"]


async def test_an_agent_reads_the_recent_messages_of_a_room(stage: Stage) -> None:
    shared = await stage.shared_room("Alpha", name="Standup")
    for text in ("yesterday: fixed the build", "today: the release notes"):
        await stage.admin.send_text(shared, text)
    answer = await stage.ask("Alpha", call("matrix_read_room", room="Standup", limit=5))
    body = answer["content"]["body"]
    assert "Admin: yesterday: fixed the build" in body
    assert "Admin: today: the release notes" in body
    assert body.index("yesterday") < body.index("today")


async def test_an_agent_messages_a_permitted_person_in_a_direct_chat(
    stage: Stage, homeserver: Homeserver
) -> None:
    person = await homeserver.register_user(fresh_localpart("carol"), displayname="Carol")
    try:
        await stage.ask("Alpha", call("matrix_message_person", user=person.mxid, text="Hi Carol"))
        dm = await person.wait_for_invite(timeout=WAIT)
        await person.join(dm)
        said = await person.wait_for_event(
            dm, from_tool(stage.mxid("Alpha"), "matrix_message_person"), WAIT
        )
        assert said["content"]["body"] == "Hi Carol"
        # The same chat the second time; and it is a conversation: Carol's answer reaches Alpha.
        await stage.ask("Alpha", call("matrix_message_person", user=person.mxid, text="Again"))
        await person.wait_for_event(dm, lambda e: e["content"]["body"] == "Again", WAIT)
        asked = await person.send_text(dm, "thanks!")
        await person.wait_for_event(dm, reply_to(stage.mxid("Alpha"), asked, None), WAIT)
        # Nobody outside the bridge's permissions.
        refused = await stage.ask(
            "Alpha", call("matrix_message_person", user="@eve:elsewhere.test", text="psst")
        )
        assert "not a person you may message" in refused["content"]["body"]
    finally:
        await person.close()


async def test_an_agent_talks_to_another_and_gets_its_answer(stage: Stage) -> None:
    answer = await stage.ask(
        "Alpha", call("matrix_talk_to_agent", agent=stage.names["Beta"], message="ping 42")
    )
    beta_room = stage.rooms["Beta"]
    asked = await stage.admin.wait_for_event(
        beta_room, from_tool(stage.mxid("Alpha"), "matrix_talk_to_agent"), WAIT
    )
    assert asked["content"]["body"] == "ping 42"
    beta_said = await stage.admin.wait_for_event(
        beta_room, reply_to(stage.mxid("Beta"), asked["event_id"], None), WAIT
    )
    assert beta_said["content"]["body"].startswith("echo: ")
    assert "ping 42" in beta_said["content"]["body"]
    # Beta's answer came back to Alpha as the tool's result.
    assert "answered: echo:" in answer["content"]["body"]
    assert "ping 42" in answer["content"]["body"]


async def test_a_slow_answer_reaches_the_asking_agent_later_as_a_message(stage: Stage) -> None:
    stage.app.tools.talks.talk_wait = 0  # Beta always takes longer than this
    answer = await stage.ask(
        "Alpha", call("matrix_talk_to_agent", agent=stage.names["Beta"], message="late ping")
    )
    assert "has not answered yet" in answer["content"]["body"]
    beta_room = stage.rooms["Beta"]
    asked = await stage.admin.wait_for_event(
        beta_room, from_tool(stage.mxid("Alpha"), "matrix_talk_to_agent"), WAIT
    )
    beta_said = await stage.admin.wait_for_event(
        beta_room, reply_to(stage.mxid("Beta"), asked["event_id"], None), WAIT
    )
    # Alpha was told Beta's answer as a message, and answered it there.
    alpha_said = await stage.admin.wait_for_event(
        beta_room, reply_to(stage.mxid("Alpha"), beta_said["event_id"], None), WAIT
    )
    body = alpha_said["content"]["body"]
    assert "The answer to your message to Beta" in body and "late ping" in body


async def test_agents_asking_each_other_in_circles_stop_at_the_hop_limit(stage: Stage) -> None:
    names = [stage.names["Beta"], stage.names["Alpha"]]
    message = "the end"
    for depth in range(8):  # deeper than max_hops (2): each agent would ask the other again
        # Built from the inside out: the outermost call (Alpha's) is to Beta.
        message = call("matrix_talk_to_agent", agent=names[(depth + 1) % 2], message=message)
    await stage.ask("Alpha", message)
    stopped = await _notice_anywhere(stage, "was not passed on")
    assert "limit is 2" in stopped["content"]["body"]
    await asyncio.sleep(10)  # anything still under way would show now
    talks = [
        e
        for room in stage.rooms.values()
        for e in stage.admin.events_seen(room)
        if "hop" in (e.get("content") or {}).get(MARKER, {})  # the messages passed on
    ]
    assert 1 <= len(talks) <= 2
    assert {e["content"][MARKER]["hop"] for e in talks} <= {1, 2}


async def test_an_agent_cannot_post_into_a_room_it_is_not_in(stage: Stage) -> None:
    private = await stage.admin.create_room(name="Private", preset="private_chat")
    answer = await stage.ask("Alpha", call("matrix_send_message", room=private, text="intrusion"))
    assert "not a member" in answer["content"]["body"]
    await stage.admin.send_text(private, "marker")
    await stage.admin.wait_for_event(private, lambda e: e["content"]["body"] == "marker", WAIT)
    assert not [e for e in stage.admin.events_seen(private) if e["sender"] == stage.mxid("Alpha")]


async def test_the_tool_api_refuses_another_agents_id_or_no_secret(stage: Stage) -> None:
    beta_room = stage.rooms["Beta"]
    alpha_secret = await stage.secret("Alpha")
    url = f"http://127.0.0.1:{stage.app.config.appservice.port}"
    url += "/_letta_appservice/tools/v1/matrix_send_message"

    async def post(agent: str, secret: str | None, text: str) -> tuple[int, str]:
        headers = {"X-Letta-Agent-Id": stage.ids[agent]}
        if secret is not None:
            headers["Authorization"] = f"Bearer {secret}"
        body = {"room": beta_room, "text": text}
        async with aiohttp.ClientSession() as http:
            async with http.post(url, json=body, headers=headers) as r:
                return r.status, await r.text()

    for agent, secret in (("Beta", alpha_secret), ("Beta", None), ("Beta", ""), ("Alpha", "x")):
        status, text = await post(agent, secret, "forged")
        assert status == 403, text
        assert alpha_secret not in text
    # Alpha's own pair works (Alpha is not in Beta's room, so that is refused, differently).
    status, text = await post("Alpha", alpha_secret, "honest")
    assert status == 400 and "not a member" in text
    await stage.admin.send_text(beta_room, "marker")
    await stage.admin.wait_for_event(beta_room, lambda e: e["content"]["body"] == "marker", WAIT)
    bodies = [e["content"].get("body") for e in stage.admin.events_seen(beta_room)]
    assert "forged" not in bodies and "honest" not in bodies


async def _notice_anywhere(stage: Stage, text: str) -> Event:
    """The first event in either agent room whose body contains ``text``."""

    def match(e: Event) -> bool:
        return text in str(e["content"]["body"])

    async with asyncio.timeout(WAIT * 2):
        while True:
            for room in stage.rooms.values():
                with contextlib.suppress(TimeoutError):
                    return await stage.admin.wait_for_event(room, match, 2)


async def test_a_steady_pass_writes_nothing_and_an_admin_switches_tools_off_and_on(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync, alpha = stage.app.tools.sync, stage.ids["Alpha"]
    secret = await stage.secret("Alpha")
    letta_writes: list[str] = []
    for name in ("upsert", "attach", "detach", "set_secrets"):
        method = getattr(sync.letta, name)

        async def spy(*args: Any, _name: str = name, _method: Any = method) -> Any:
            letta_writes.append(_name)
            return await _method(*args)

        monkeypatch.setattr(sync.letta, name, spy)
    await stage.app.scheduler.run_now()
    assert letta_writes == []
    # Off: the tools leave the agent in Letta, and so does its secret.
    await stage.admin.send_text(stage.rooms["Alpha"], f"!letta tools {alpha} off")
    await eventually(lambda: _lacks_tools(stage, alpha), WAIT)
    await eventually(lambda: _no_secrets(stage, alpha), WAIT)
    assert not await sync.check(alpha, secret)
    # A pass keeps it off (the admin's switch beats `tools.agents: all`); on brings them back
    # with a new secret.
    await stage.app.scheduler.run_now()
    assert await _lacks_tools(stage, alpha)
    await stage.admin.send_text(stage.rooms["Alpha"], f"!letta tools {alpha} on")
    await eventually(lambda: _has_tools(stage, alpha), WAIT)
    assert await stage.secret("Alpha") != secret


async def _lacks_tools(stage: Stage, agent_id: str) -> bool:
    return not set(TOOLS) & set(await stage.letta.tools(agent_id))


async def _no_secrets(stage: Stage, agent_id: str) -> bool:
    agent = await stage.letta.call("GET", f"/v1/agents/{agent_id}", include="agent.secrets")
    return not [s for s in agent["secrets"] if s["key"].startswith("LETTA_APPSERVICE_")]


async def _has_tools(stage: Stage, agent_id: str) -> bool:
    return set(TOOLS) <= set(await stage.letta.tools(agent_id))


async def test_tools_deleted_in_letta_come_back_on_the_next_pass(
    stage: Stage, monkeypatch: pytest.MonkeyPatch
) -> None:
    [tool] = await stage.letta.call("GET", "/v1/tools/", name="matrix_send_message")
    await stage.letta.call("DELETE", f"/v1/tools/{tool['id']}")
    for agent_id in stage.ids.values():
        assert "matrix_send_message" not in await stage.letta.tools(agent_id)
    # The pass that notices cannot register them (Letta failing): the next one still does.
    sync = stage.app.tools.sync
    upsert = sync.letta.upsert

    async def fails_once(*args: Any) -> Any:
        monkeypatch.setattr(sync.letta, "upsert", upsert)
        raise LettaError("server", "Letta is restarting")

    monkeypatch.setattr(sync.letta, "upsert", fails_once)
    await stage.app.scheduler.run_now()
    assert not await _has_tools(stage, stage.ids["Alpha"])
    await stage.app.scheduler.run_now()
    for agent_id in stage.ids.values():
        assert await _has_tools(stage, agent_id)
    # And they work: the agent posts through the new registration.
    room = await stage.shared_room("Alpha")
    await stage.ask("Alpha", call("matrix_send_message", room=room, text="back again"))
    posted = await stage.admin.wait_for_event(
        room, from_tool(stage.mxid("Alpha"), "matrix_send_message"), WAIT
    )
    assert posted["content"]["body"] == "back again"
