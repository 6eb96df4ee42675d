"""Ingest benchmark: the real appservice (App: inbox, worker, real router, state store, Letta
client) on SQLite and PostgreSQL, against a stock mautrix AppService with a no-op handler
measured in the same run.

    .venv/bin/python bench/ingest.py [--transactions 400] [--rounds 3] [--backlog 20000]

Transactions of 50 m.room.message events are PUT over loopback HTTP one at a time (as Tuwunel
and Synapse send them). Each transaction holds the events of one room from 50 senders: one in
``--agent-every`` goes to an agent room the bridge serves (every message is a Letta turn: the
fake Letta answers at once, the reply is posted to a stub homeserver), the others to rooms the
bridge does not know (40 of them). The worker drains while the transactions arrive.
Backlog: ``--backlog`` events (unknown rooms) are stored with the worker stopped, then the
worker is started and timed until the inbox is drained.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from mautrix.appservice import AppService
from mautrix.appservice.state_store import ASStateStore
from mautrix.client.state_store.memory import MemoryStateStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from letta_appservice.app import App
from letta_appservice.config import parse_config
from tests.harness.config import free_port
from tests.harness.fake_letta import FakeLetta
from tests.harness.postgres import admin_dsn, database_url, drop_database
from tests.harness.stub_homeserver import StubHomeserver, seed_agent_rooms

DOMAIN = "bench.local"
HS_TOKEN = "bench-hs-token-0123456789abcdef"
AS_TOKEN = "bench-as-token-0123456789abcdef"
EVENTS_PER_TXN = 50
SENDERS = 50
UNKNOWN_ROOMS = 40
# Agent transactions go round these rooms: the loop guard passes at most 60 turns per room in
# 5 minutes, and a real busy bridge spreads its turns over many agents.
AGENT_ROOMS = 20


class _MemoryASStateStore(MemoryStateStore, ASStateStore):
    """An in-memory AS state store, so the baseline does no file I/O either."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


def transaction(tag: str, n: int, room_id: str) -> bytes:
    events = [
        {
            "event_id": f"${tag}{n}_{i}_{uuid.uuid4().hex}",
            "room_id": room_id,
            "sender": f"@user{i % SENDERS}:{DOMAIN}",
            "type": "m.room.message",
            "origin_server_ts": int(time.time() * 1000),
            "content": {"msgtype": "m.text", "body": f"message {n}/{i} " + "lorem ipsum " * 8},
            "unsigned": {"age": 12},
        }
        for i in range(EVENTS_PER_TXN)
    ]
    return json.dumps({"events": events}).encode()


def unknown_room(n: int) -> str:
    return f"!unknown{n % UNKNOWN_ROOMS}:{DOMAIN}"


async def put_all(url: str, bodies: list[tuple[str, bytes]]) -> list[float]:
    latencies = []
    headers = {"Authorization": f"Bearer {HS_TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for txn_id, body in bodies:
            t0 = time.perf_counter()
            async with http.put(
                f"{url}/_matrix/app/v1/transactions/{txn_id}", data=body, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
            latencies.append(time.perf_counter() - t0)
    return latencies


def agent_room(n: int, agent_every: int) -> str:
    return f"!agent{n // agent_every % AGENT_ROOMS}:{DOMAIN}"


async def drive(url: str, count: int, agent_every: int) -> dict[str, float]:
    tag = uuid.uuid4().hex[:6]
    warm = [(f"w{tag}{n}", transaction("w", n, unknown_room(n))) for n in range(20)]
    await put_all(url, warm)
    bodies = [
        (
            f"t{tag}{n}",
            transaction(
                "t", n, agent_room(n, agent_every) if n % agent_every == 0 else unknown_room(n)
            ),
        )
        for n in range(count)
    ]
    start = time.perf_counter()
    latencies = sorted(await put_all(url, bodies))
    wall = time.perf_counter() - start
    return {
        "events_per_s": count * EVENTS_PER_TXN / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[max(0, int(len(latencies) * 0.99) - 1)] * 1000,
    }


async def run_baseline(count: int, agent_every: int) -> dict[str, float]:
    port = free_port()
    az = AppService(
        server="http://127.0.0.1:1",
        domain=DOMAIN,
        as_token=AS_TOKEN,
        hs_token=HS_TOKEN,
        bot_localpart="bot",
        id="bench",
        state_store=_MemoryASStateStore(),
    )

    async def noop(_evt: Any) -> None:
        return None

    az.matrix_event_handler(noop)
    await az.start("127.0.0.1", port)
    try:
        return await drive(f"http://127.0.0.1:{port}", count, agent_every)
    finally:
        await az.stop()


async def seed(database: str, letta: FakeLetta, hs: StubHomeserver) -> None:
    """Bridged agents with their rooms, as a reconcile would have left them."""
    rows = []
    for i in range(AGENT_ROOMS):
        fake = letta.add_agent(f"Busy {i}")
        mxid = f"@agent_{fake.id.removeprefix('agent-').replace('-', '_')}:{DOMAIN}"
        rows.append((fake.id, fake.name, mxid, f"!agent{i}:{DOMAIN}"))
    await seed_agent_rooms(database, rows)
    hs.joined.update(room for *_, room in rows)


def config(database: str, hs_url: str, letta_url: str, port: int) -> Any:
    return parse_config(
        {
            "homeserver": {"address": hs_url, "domain": DOMAIN},
            "appservice": {
                "id": "letta",
                "address": f"http://127.0.0.1:{port}",
                "hostname": "127.0.0.1",
                "port": port,
                "as_token": AS_TOKEN,
                "hs_token": HS_TOKEN,
                "database": database,
            },
            "letta": {"base_url": letta_url, "sync_interval": 3600},
            "bridge": {"permissions": {DOMAIN: "user"}},
        },
        env={},
    )


async def run_app(database: str, count: int, agent_every: int, backlog: int) -> dict[str, float]:
    hs, letta = StubHomeserver(DOMAIN), FakeLetta()
    await hs.start()
    await letta.start()
    await seed(database, letta, hs)
    port = free_port()
    app = App(config(database, hs.url, letta.url, port))
    await app.start()
    try:
        await app.wait_ready(timeout=60)
        url = f"http://127.0.0.1:{port}"
        result = await drive(url, count, agent_every)
        await app.worker.wait_idle(timeout=600)
        turns = len(letta.message_log)
        # Backlog: stored while the worker is stopped, then drained.
        await app.worker.stop()
        n = max(1, backlog // EVENTS_PER_TXN)
        bodies = [(f"b{uuid.uuid4().hex}", transaction("b", i, unknown_room(i))) for i in range(n)]
        await put_all(url, bodies)
        t0 = time.perf_counter()
        await app.worker.start()
        await app.worker.wait_idle(timeout=600)
        result["drain_per_s"] = n * EVENTS_PER_TXN / (time.perf_counter() - t0)
        result["stored"] = await app.db.fetchval("SELECT COUNT(*) FROM inbox")
        result["turns"] = turns
        return result
    finally:
        await app.stop()
        await letta.stop()
        await hs.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    parser.add_argument("--agent-every", type=int, default=20, help="1 in N to the agent room")
    parser.add_argument("--backlog", type=int, default=20000)
    parser.add_argument("--skip-postgres", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.CRITICAL)
    n = args.transactions
    print(
        f"{n} transactions x {EVENTS_PER_TXN} events ({SENDERS} senders, one room each: 1 in"
        f" {args.agent_every} to one of {AGENT_ROOMS} bridged agents' rooms, the rest to"
        f" {UNKNOWN_ROOMS} unknown rooms), one in flight, loopback HTTP; real app and router;"
        f" {args.rounds} rounds, paths alternating, median round shown;"
        f" backlog {args.backlog} events\n"
    )
    labels = ["mautrix AppService, no-op handler (baseline)", "letta-appservice, SQLite"]
    if not args.skip_postgres:
        labels.append("letta-appservice, PostgreSQL")
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    for _ in range(args.rounds):
        # Machine noise moves all paths alike when they alternate within one run.
        with tempfile.TemporaryDirectory() as tmp:
            results[labels[0]].append(await run_baseline(n, args.agent_every))
            results[labels[1]].append(
                await run_app(f"sqlite:{tmp}/b.db", n, args.agent_every, args.backlog)
            )
        if not args.skip_postgres:
            name = f"la_bench_{uuid.uuid4().hex[:8]}"
            conn = await asyncpg.connect(admin_dsn())
            await conn.execute(f'CREATE DATABASE "{name}"')
            try:
                results[labels[2]].append(
                    await run_app(database_url(name), n, args.agent_every, args.backlog)
                )
            finally:
                await drop_database(conn, name)
        print("round:", *(f"{label}: {results[label][-1]}" for label in labels), sep="\n  ")
    backlog = max(1, args.backlog // EVENTS_PER_TXN) * EVENTS_PER_TXN
    expected = (n + 20) * EVENTS_PER_TXN + backlog
    turns = len(range(0, n, args.agent_every)) * EVENTS_PER_TXN
    for label in labels[1:]:
        for r in results[label]:
            assert r["stored"] == expected, f"{label}: stored {r['stored']} of {expected}"
            assert r["turns"] == turns, f"{label}: {r['turns']} Letta turns of {turns}"
    median = {
        label: sorted(rs, key=lambda r: r["events_per_s"])[len(rs) // 2]
        for label, rs in results.items()
    }
    baseline = median[labels[0]]["events_per_s"]
    print(
        f"{'path':46} {'events/s':>9} {'ack p50':>9} {'ack p99':>9} {'x base':>7}"
        f" {'backlog/s':>10} {'turns':>6}"
    )
    for label, r in median.items():
        drain = f"{r['drain_per_s']:10.0f}" if "drain_per_s" in r else f"{'':10}"
        turns = f"{r['turns']:6.0f}" if "turns" in r else ""
        print(
            f"{label:46} {r['events_per_s']:9.0f} {r['p50_ms']:7.2f}ms {r['p99_ms']:7.2f}ms"
            f" {r['events_per_s'] / baseline:7.2f} {drain} {turns}"
        )
    per_round = [
        f"{results[label][k]['events_per_s'] / results[labels[0]][k]['events_per_s']:.2f}"
        for k in range(args.rounds)
        for label in labels[1:]
    ]
    print(f"\nratios per round ({', '.join(labels[1:])}): {', '.join(per_round)}")
    print("all events stored exactly once; every agent-room message answered")


if __name__ == "__main__":
    asyncio.run(main())
