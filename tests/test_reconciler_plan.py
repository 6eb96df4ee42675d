"""The pure parts of the reconciler: the plan, the request bodies, the scheduler, the 429
middleware (against a local aiohttp server)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from letta_appservice.db.agent import DELETED, AgentRow
from letta_appservice.letta.models import Agent
from letta_appservice.matrix import rooms
from letta_appservice.reconcile.plan import (
    ARCHIVE,
    ARCHIVED_NOTICE,
    BOT,
    CREATE,
    PUPPET,
    RECORD,
    REPAIR,
    RESTORE,
    RESTORED_NOTICE,
    SPACE_CHILD,
    UPDATE,
    Templates,
    desired_agents,
    plan,
)
from letta_appservice.reconcile.scheduler import LAST_RESULT_KEY, Scheduler

T = Templates("{name}", "{name} (agent)", " [old]")


def agent(n: int, name: str | None = None, description: str | None = None) -> Agent:
    return Agent(
        id=f"agent-{n}", name=name if name is not None else f"A{n}", description=description
    )


def row(n: int, **over: Any) -> AgentRow:
    """A row as the reconciler leaves it after applying agent(n)."""
    values: dict[str, Any] = {
        "agent_id": f"agent-{n}",
        "mxid": f"@agent_{n}:x",
        "name": f"A{n}",
        "room_id": f"!r{n}:x",
        "displayname": f"A{n}",
        "room_name": f"A{n} (agent)",
        "topic": "",
        "in_space": True,
    }
    return AgentRow(**(values | over))


def plan_for(agents: list[Agent], rows: list[AgentRow], dirty: dict | None = None) -> list:
    return plan(desired_agents(agents, T), rows, dirty or {}, T)


def test_new_agents_are_created_with_their_names() -> None:
    [change] = plan_for([agent(1, description="  Helps  ")], [])
    assert change.kind == CREATE and change.row is None
    assert change.displayname == "A1" and change.space_child is True
    assert (change.desired.room_name, change.desired.topic) == ("A1 (agent)", "Helps")


def test_unchanged_agents_need_nothing() -> None:
    assert plan_for([agent(1), agent(2)], [row(1), row(2)]) == []


def test_rename_changes_displayname_and_room_name_only() -> None:
    [change] = plan_for([agent(1, name="New")], [row(1)])
    assert change.kind == UPDATE
    assert (change.displayname, change.room_name, change.topic) == ("New", "New (agent)", None)
    assert change.space_child is None and change.notice is None


def test_description_change_sets_the_topic() -> None:
    [change] = plan_for([agent(1, description="About")], [row(1)])
    assert (change.kind, change.topic, change.room_name) == (UPDATE, "About", None)


def test_name_change_invisible_in_matrix_is_only_recorded() -> None:
    templates = Templates("Bot", "Room", "")
    rows = [row(1, displayname="Bot", room_name="Room")]
    [change] = plan(desired_agents([agent(1, name="Other")], templates), rows, {}, templates)
    assert change.kind == RECORD and not change.touches_matrix


def test_missing_agent_is_archived_once() -> None:
    [change] = plan_for([], [row(1)])
    assert change.kind == ARCHIVE and change.desired is None
    assert change.space_child is False and change.notice == ARCHIVED_NOTICE
    assert change.room_name == "A1 (agent) [old]"
    assert plan_for([], [row(1, state=DELETED, in_space=False)]) == []


def test_agent_without_room_is_archived_without_matrix_calls() -> None:
    [change] = plan_for([], [row(1, room_id=None, in_space=False)])
    assert change.kind == ARCHIVE
    assert (change.room_name, change.space_child, change.notice) == (None, None, None)


def test_reappearing_agent_is_restored_in_its_room() -> None:
    stored = row(1, state=DELETED, in_space=False, room_name="A1 (agent) [old]")
    [change] = plan_for([agent(1)], [stored])
    assert change.kind == RESTORE and change.row is stored
    assert change.room_name == "A1 (agent)" and change.space_child is True
    assert change.notice == RESTORED_NOTICE and PUPPET in change.repairs


def test_row_without_room_is_created_again() -> None:
    [change] = plan_for([agent(1)], [row(1, room_id=None, in_space=False)])
    assert change.kind == CREATE and change.displayname is None  # already set on the puppet


def test_drift_marks_become_repairs() -> None:
    [change] = plan_for([agent(1)], [row(1)], {"agent-1": frozenset({BOT, PUPPET})})
    assert change.kind == REPAIR and change.repairs == {BOT, PUPPET}
    [change] = plan_for([agent(1)], [row(1)], {"agent-1": frozenset({SPACE_CHILD})})
    assert change.space_child is True and change.repairs == frozenset()


def test_drift_of_deleted_agents_is_ignored() -> None:
    dirty = {"agent-1": frozenset({PUPPET})}
    assert plan_for([], [row(1, state=DELETED, in_space=False)], dirty) == []


def test_name_filter_and_empty_names() -> None:
    agents = [agent(1, name="bot-alpha"), agent(2, name="human"), agent(3, name="")]
    desired = desired_agents(agents, T, name_pattern=r"^bot-|^$")
    assert set(desired) == {"agent-1", "agent-3"}
    assert desired["agent-3"].displayname == "agent-3"  # no name: the id stands in


def test_stored_rows_come_first_then_new_agents_in_letta_order() -> None:
    changes = plan_for([agent(3), agent(2), agent(1, name="X")], [row(1)])
    assert [c.agent_id for c in changes] == ["agent-1", "agent-3", "agent-2"]
    assert [c.kind for c in changes] == [UPDATE, CREATE, CREATE]


def test_agent_room_body_is_one_complete_request() -> None:
    body = rooms.agent_room_body(
        alias_localpart="agent_1",
        name="A1",
        topic="",
        bot="@bot:x",
        puppet="@agent_1:x",
        admins=["@admin:x"],
        space_id="!space:x",
        domain="x",
    )
    assert body["invite"] == ["@agent_1:x", "@admin:x"]
    assert "topic" not in body
    assert body["power_level_content_override"]["users"] == {
        "@bot:x": 100,
        "@agent_1:x": 50,
        "@admin:x": 100,
    }
    state = {(e["type"], e["state_key"]): e["content"] for e in body["initial_state"]}
    assert state[("m.space.parent", "!space:x")] == {"via": ["x"], "canonical": True}
    assert state[("m.room.join_rules", "")]["allow"] == [
        {"type": "m.room_membership", "room_id": "!space:x"}
    ]


def test_children_of_ignores_removed_children() -> None:
    state = [
        {"type": "m.space.child", "state_key": "!a:x", "content": {"via": ["x"]}},
        {"type": "m.space.child", "state_key": "!b:x", "content": {}},
        {"type": "m.room.name", "state_key": "", "content": {"name": "S"}},
    ]
    assert rooms.children_of(state) == {"!a:x"}


# --- scheduler ---------------------------------------------------------------------------------


class Result:
    def __init__(self, n: int) -> None:
        self.result, self.n = "ok", n

    def to_json(self) -> dict[str, Any]:
        return {"result": self.result, "n": self.n}


class MemoryState:
    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    async def set(self, key: str, value: Any) -> None:
        self.values[key] = value


async def test_scheduler_runs_one_pass_at_a_time_and_keeps_the_last_result() -> None:
    running, most, calls = 0, 0, []
    release = asyncio.Event()

    async def run_pass(full: bool) -> Result:
        nonlocal running, most
        running += 1
        most = max(most, running)
        calls.append(full)
        await release.wait()
        running -= 1
        return Result(len(calls))

    state = MemoryState()
    scheduler = Scheduler(run_pass, interval=3600, state=state)
    scheduler.start()  # the start-up pass (full) begins and waits for `release`
    first = asyncio.create_task(scheduler.run_now())
    second = asyncio.create_task(scheduler.run_now(full=True))
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(first, second)
    assert most == 1
    assert calls == [True, False, True]
    assert [r.n for r in results] == [2, 3]
    assert state.values[LAST_RESULT_KEY] == {"result": "ok", "n": 3}
    await scheduler.stop()
    assert scheduler.passes == 3


async def test_a_change_made_before_a_pass_waits_for_the_running_one() -> None:
    """What `reset` relies on: its change and its pass are not interleaved with another pass
    (which could save an older copy of the agent's row)."""
    events: list[str] = []
    release = asyncio.Event()

    async def run_pass(full: bool) -> Result:
        events.append("pass starts")
        if len(events) == 1:
            await release.wait()
        events.append("pass ends")
        return Result(len(events))

    async def change() -> None:
        events.append("change")

    scheduler = Scheduler(run_pass, interval=3600, state=MemoryState())
    running = asyncio.create_task(scheduler.run_now())
    await asyncio.sleep(0)
    reset = asyncio.create_task(scheduler.run_now(first=change))
    await asyncio.sleep(0.05)
    assert events == ["pass starts"]  # the change waits for the running pass
    release.set()
    await asyncio.gather(running, reset)
    assert events == ["pass starts", "pass ends", "change", "pass starts", "pass ends"]


async def test_scheduler_poke_runs_a_pass_soon() -> None:
    passes = asyncio.Queue()

    async def run_pass(full: bool) -> Result:
        await passes.put(full)
        return Result(0)

    scheduler = Scheduler(run_pass, interval=3600, state=MemoryState(), poke_delay=0)
    scheduler.start()
    assert await passes.get() is True
    scheduler.poke()
    assert await asyncio.wait_for(passes.get(), 10) is False
    await scheduler.stop()


# --- 429 ---------------------------------------------------------------------------------------


@pytest.fixture
async def limited() -> Any:
    seen: list[tuple[str, Any]] = []
    plan_: list[web.Response] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.method, await request.json() if request.can_read_body else None))
        return plan_.pop(0) if plan_ else web.json_response({"ok": True})

    app = web.Application()
    app.router.add_route("*", "/x", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}/x"
    yield url, seen, plan_
    await runner.cleanup()


def too_many(retry_after_ms: int | None = None, header: str | None = None) -> web.Response:
    body = {"errcode": "M_LIMIT_EXCEEDED", "error": "Too Many Requests"}
    if retry_after_ms is not None:
        body["retry_after_ms"] = retry_after_ms
    headers = {"Retry-After": header} if header else None
    return web.json_response(body, status=429, headers=headers)


async def test_rate_limited_requests_wait_and_are_sent_again(limited: Any) -> None:
    url, seen, responses = limited
    middleware = rooms.RateLimitMiddleware(default_wait=0.01)
    responses += [too_many(retry_after_ms=10), too_many(header="0")]
    async with aiohttp.ClientSession(middlewares=(middleware,)) as http:
        async with http.put(url, data=json.dumps({"a": 1})) as resp:
            assert resp.status == 200 and await resp.json() == {"ok": True}
    assert seen == [("PUT", {"a": 1})] * 3
    assert middleware.waited == 2


async def test_rate_limit_longer_than_allowed_is_returned(limited: Any) -> None:
    url, seen, responses = limited
    middleware = rooms.RateLimitMiddleware(max_wait=1)
    responses.append(too_many(retry_after_ms=60_000))
    async with aiohttp.ClientSession(middlewares=(middleware,)) as http:
        async with http.get(url) as resp:
            assert resp.status == 429
            assert (await resp.json())["retry_after_ms"] == 60_000  # still readable
    assert len(seen) == 1 and middleware.waited == 0
