"""Conversation latency: a person's message to an agent until the agent's reply is visible to
that person via /sync, on a real Synapse with a fake Letta that answers instantly; compared with
a zero-work echo appservice on the same homeserver (its own push and delivery), same run.

    .venv/bin/python bench/latency.py [--messages 500] [--agents 50] [--burst 10]
                                      [--database sqlite|postgres] [--concurrency 8]

Per message (one in flight at a time, round robin over the agents):
  round trip      send -> reply seen by the sender's /sync
  send->stored    send -> the pushed event is stored in the bridge's inbox
  stored->letta   inbox -> the Letta request arrives (the bridge's own work before Letta)
  letta->visible  Letta's answer -> reply seen by /sync (the bridge posts, Synapse delivers)
Throughput: every agent gets --burst messages at once; replies/s until the last is seen.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.harness import letta_replies as lr
from tests.harness.apps import Apps
from tests.harness.config import ADMIN, INSTANCES, SERVER_NAME, write_registrations
from tests.harness.fake_letta import FakeLetta
from tests.harness.matrix_user import MatrixUser
from tests.harness.postgres import pg_database
from tests.harness.synapse import SynapseServer

CS = "/_matrix/client/v3"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


def summary(values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return f"p50 {statistics.median(ms):7.1f} ms   p99 {pct(ms, 99):7.1f} ms"


def replied(sender: str, event_id: str) -> Callable[[dict[str, Any]], bool]:
    def match(e: dict[str, Any]) -> bool:
        relates = e["content"]["m.relates_to"]
        return e["sender"] == sender and relates["m.in_reply_to"]["event_id"] == event_id

    return match


class EchoAppservice:
    """The baseline: an appservice that does nothing but answer each pushed message at once,
    as one puppet, with a reply. What is left is the homeserver's push and delivery."""

    def __init__(self, synapse: SynapseServer) -> None:
        inst = INSTANCES["lab"]
        self.inst = inst
        self.base = synapse.url
        self.puppet = f"@lab_agent_echo:{SERVER_NAME}"
        self.pushed: dict[str, float] = {}
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._http = aiohttp.ClientSession(
            headers={"Authorization": f"Bearer {self.inst.as_token}"}
        )
        app = web.Application()
        app.router.add_put("/_matrix/app/v1/transactions/{txn}", self._transaction)
        app.router.add_post("/_matrix/app/v1/ping", lambda _r: web.json_response({}))
        app.router.add_get("/_matrix/app/v1/users/{user}", lambda _r: web.json_response({}))
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.inst.port).start()
        body = {"type": "m.login.application_service", "username": "lab_agent_echo"}
        async with self._http.post(f"{self.base}{CS}/register", json=body) as resp:
            assert resp.status in (200, 400), await resp.text()  # 400: exists already

    async def join(self, room_id: str) -> None:
        assert self._http is not None
        url = f"{self.base}{CS}/join/{quote(room_id)}?user_id={quote(self.puppet)}"
        async with self._http.post(url, json={}) as resp:
            assert resp.status == 200, await resp.text()

    async def _transaction(self, request: web.Request) -> web.Response:
        if request.query.get("access_token") not in (None, self.inst.hs_token) or (
            request.headers.get("Authorization", f"Bearer {self.inst.hs_token}")
            != f"Bearer {self.inst.hs_token}"
        ):
            return web.json_response({"errcode": "M_FORBIDDEN"}, status=403)
        now = time.monotonic()
        for event in (await request.json()).get("events", []):
            if event.get("type") == "m.room.message" and event["sender"] != self.puppet:
                self.pushed[event["event_id"]] = now
                task = asyncio.create_task(self._reply(event))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
        return web.json_response({})

    async def _reply(self, event: dict[str, Any]) -> None:
        assert self._http is not None
        room, txn = quote(event["room_id"]), uuid.uuid4().hex
        url = f"{self.base}{CS}/rooms/{room}/send/m.room.message/{txn}"
        content = {
            "msgtype": "m.text",
            "body": "ok",
            "m.relates_to": {"m.in_reply_to": {"event_id": event["event_id"]}},
        }
        async with self._http.put(url, json=content, params={"user_id": self.puppet}) as resp:
            assert resp.status == 200, await resp.text()

    async def stop(self) -> None:
        if self._runner:
            await self._runner.cleanup()
        if self._http:
            await self._http.close()


async def measure(
    user: MatrixUser,
    series: dict[str, list[tuple[str, str]]],  # name -> (room, replying puppet) targets
    count: int,
    parts: Callable[[str, str, float, float], None] | None = None,
) -> dict[str, list[float]]:
    """``count`` messages per series, one at a time, round robin over each series' targets and
    alternating between the series, so all see the same load; the round trip of each."""
    trips: dict[str, list[float]] = {name: [] for name in series}
    for n in range(count):
        for name, targets in series.items():
            room, puppet = targets[n % len(targets)]
            body = f"message {n} {uuid.uuid4().hex[:8]}"
            t0 = time.monotonic()
            event_id = await user.send_text(room, body)
            await user.wait_for_event(room, replied(puppet, event_id), timeout=60)
            t1 = time.monotonic()
            trips[name].append(t1 - t0)
            if parts and name == "bridge":
                parts(event_id, body, t0, t1)
        if n % 50 == 49:
            await user.mark()  # keep the seen-events list short
    return trips


async def burst(user: MatrixUser, targets: list[tuple[str, str]], per_target: int) -> float:
    """Every target gets ``per_target`` messages at once; replies per second until the last."""
    await user.mark()
    t0 = time.monotonic()

    async def one_room(room: str, puppet: str) -> list[tuple[str, str, str]]:
        return [
            (room, puppet, await user.send_text(room, f"burst {i}")) for i in range(per_target)
        ]

    sent = [s for batch in await asyncio.gather(*(one_room(*t) for t in targets)) for s in batch]
    for room, puppet, event_id in sent:
        await user.wait_for_event(room, replied(puppet, event_id), timeout=300)
    return len(sent) / (time.monotonic() - t0)


async def with_database(kind: str, workdir: Path, use: Callable[[str], Awaitable[None]]) -> None:
    if kind == "sqlite":
        await use(f"sqlite:{workdir / 'bridge.db'}")
        return
    async with pg_database("la_bench") as url:
        await use(url)


async def run(args: argparse.Namespace, synapse: SynapseServer, database: str) -> None:
    letta = FakeLetta()
    letta.responder = lambda _agent, text: [lr.assistant("ok: " + text.rsplit("\n", 1)[-1])]
    await letta.start()
    apps = Apps(synapse.url, letta.url, ready_timeout=120)
    echo = EchoAppservice(synapse)
    stored: dict[str, float] = {}
    try:
        app = await apps.start(
            database, first_pass=True, letta={"max_concurrency": args.concurrency}
        )
        original = app.inbox.store_transaction

        async def timed_store(txn_id: str, events: Any) -> Any:
            result = await original(txn_id, events)
            now = time.monotonic()
            for event in events:
                stored.setdefault(event["event_id"], now)
            return result

        app.inbox.store_transaction = timed_store  # type: ignore[method-assign]
        for n in range(args.agents):
            letta.add_agent(f"Bench {n:03}")
        await app.scheduler.run_now()
        user = await synapse.register_user("admin", admin=True, displayname="Admin")
        assert user.mxid == ADMIN
        targets = [(a.room_id, a.mxid) for a in await app.agents.all() if a.room_id]
        for room, _puppet in targets:
            await user.join(room)

        await echo.start()
        echo_rooms = await asyncio.gather(
            *(user.create_room(preset="private_chat", invite=[echo.puppet]) for _ in targets)
        )
        for room in echo_rooms:
            await echo.join(room)
        series = {"bridge": targets, "echo": [(room, echo.puppet) for room in echo_rooms]}

        print(f"Warming up ({len(targets)} agents)…", file=sys.stderr)
        await measure(user, series, 2 * len(targets))
        rows: dict[str, list[float]] = {k: [] for k in ("stored", "letta", "visible")}
        by_body = {}

        def parts(event_id: str, body: str, t0: float, t1: float) -> None:
            by_body[body] = (event_id, t0, t1)

        letta.requests.clear()
        letta.message_log.clear()
        print(f"Measuring {args.messages} messages each…", file=sys.stderr)
        trips = await measure(user, series, args.messages, parts)
        posts = [r for r in letta.requests if r.method == "POST"]
        request_at = {r.json["messages"][0]["content"].rsplit("\n", 1)[-1]: r.time for r in posts}
        done_at = {m.text.rsplit("\n", 1)[-1]: m.end_time for m in letta.message_log}
        for body, (event_id, t0, t1) in by_body.items():
            rows["stored"].append(stored[event_id] - t0)
            rows["letta"].append(request_at[body] - stored[event_id])
            rows["visible"].append(t1 - done_at[body])

        print("Bursts…", file=sys.stderr)
        bridge_rate = await burst(user, series["bridge"], args.burst)
        echo_rate = await burst(user, series["echo"], args.burst)
        bridge, echo_trips = trips["bridge"], trips["echo"]
        report(args, database, bridge, rows, echo_trips, bridge_rate, echo_rate, len(targets))
        await user.close()
    finally:
        await echo.stop()
        await apps.close()
        await letta.stop()


def report(
    args: argparse.Namespace,
    database: str,
    bridge: list[float],
    rows: dict[str, list[float]],
    echo: list[float],
    bridge_rate: float,
    echo_rate: float,
    agents: int,
) -> None:
    added50 = statistics.median(bridge) - statistics.median(echo)
    added99 = pct(bridge, 99) - pct(echo, 99)
    kind = database.split(":", 1)[0]
    print(
        f"\nConversations, {args.messages} messages over {agents} agents, {kind}, "
        f"letta.max_concurrency {args.concurrency}"
    )
    print(f"  round trip (bridge)          {summary(bridge)}   target p50 < 80 ms")
    print(f"    send -> stored in inbox    {summary(rows['stored'])}")
    print(f"    stored -> Letta request    {summary(rows['letta'])}")
    print(f"    Letta answer -> visible    {summary(rows['visible'])}")
    print(f"  round trip (echo appservice) {summary(echo)}")
    added = f"p50 {added50 * 1000:7.1f} ms   p99 {added99 * 1000:7.1f} ms"
    print(f"  bridge-added latency         {added}   targets 15 / 60 ms")
    print(
        f"  throughput, {args.burst} at once per agent: bridge {bridge_rate:.0f} replies/s, "
        f"echo appservice {echo_rate:.0f} replies/s"
    )


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=500)
    p.add_argument("--agents", type=int, default=50)
    p.add_argument("--burst", type=int, default=10, help="messages per agent in the burst")
    p.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--concurrency", type=int, default=8, help="letta.max_concurrency")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    workdir = Path(tempfile.mkdtemp(prefix="latency-bench-"))
    registrations = write_registrations(workdir)
    print("Starting Synapse…", file=sys.stderr)
    synapse = await SynapseServer.start(workdir / "hs", registrations, server_name=SERVER_NAME)
    try:
        await with_database(args.database, workdir, lambda db: run(args, synapse, db))
    finally:
        await synapse.stop()


if __name__ == "__main__":
    asyncio.run(main())
