"""Ingest benchmark: 50-event transactions PUT over loopback HTTP, one in flight at a time (as
Tuwunel and Synapse send them), into the durable inbox on SQLite and PostgreSQL, against a stock
mautrix AppService with a no-op handler measured in the same run.

    .venv/bin/python bench/ingest.py [--transactions 400]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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

from letta_appservice.db.database import DatabaseURL, open_database
from letta_appservice.db.inbox import InboxStore
from letta_appservice.inbox.web import WebServer
from letta_appservice.inbox.worker import InboxWorker
from letta_appservice.metrics import Metrics
from tests.harness.config import free_port
from tests.harness.postgres import admin_dsn, database_url

WORKER = "--no-worker" not in sys.argv
HS_TOKEN = "bench-hs-token-0123456789abcdef"
EVENTS_PER_TXN = 50


class _MemoryASStateStore(MemoryStateStore, ASStateStore):
    """An in-memory AS state store, so the baseline does no file I/O either."""

    def __init__(self) -> None:
        MemoryStateStore.__init__(self)
        ASStateStore.__init__(self)


def transaction(n: int) -> bytes:
    events = [
        {
            "event_id": f"${n}_{i}_{uuid.uuid4().hex}",
            "room_id": f"!room{i % 7}:bench.local",
            "sender": f"@user{i % 13}:bench.local",
            "type": "m.room.message",
            "origin_server_ts": 1700000000000 + n * 100 + i,
            "content": {"msgtype": "m.text", "body": f"message {n}/{i} " + "lorem ipsum " * 8},
            "unsigned": {"age": 12},
        }
        for i in range(EVENTS_PER_TXN)
    ]
    return json.dumps({"events": events}).encode()


async def drive(url: str, count: int) -> dict[str, float]:
    bodies = [transaction(n) for n in range(count)]
    latencies: list[float] = []
    headers = {"Authorization": f"Bearer {HS_TOKEN}", "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http:
        for n in range(20):  # warm-up
            async with http.put(
                f"{url}/_matrix/app/v1/transactions/warm{n}",
                data=transaction(-n - 1),
                headers=headers,
            ) as r:
                assert r.status == 200, await r.text()
        start = time.perf_counter()
        for n, body in enumerate(bodies):
            t0 = time.perf_counter()
            async with http.put(
                f"{url}/_matrix/app/v1/transactions/t{n}", data=body, headers=headers
            ) as resp:
                assert resp.status == 200, await resp.text()
            latencies.append(time.perf_counter() - t0)
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "events_per_s": count * EVENTS_PER_TXN / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def run_baseline(count: int) -> dict[str, float]:
    port = free_port()
    az = AppService(
        server="http://127.0.0.1:1",
        domain="bench.local",
        as_token="bench-as-token-0123456789abcdef",
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
        return await drive(f"http://127.0.0.1:{port}", count)
    finally:
        await az.stop()


async def run_durable(database: str, count: int) -> dict[str, float]:
    db = await open_database(DatabaseURL.parse(database), in_child=False)
    store = InboxStore(db)

    async def noop(_event: Any) -> None:
        return None

    # The worker drains as it would in production (no-op handler), so the numbers include it.
    worker = InboxWorker(store, noop)
    server = WebServer(
        hs_token=HS_TOKEN,
        max_body_size=10 * 1024 * 1024,
        inbox=store,
        on_stored=worker.wake,
        query_user=lambda _m: asyncio.sleep(0, False),
        ready_check=lambda: asyncio.sleep(0, {}),
        metrics=Metrics(),
    )
    port = free_port()
    if WORKER:
        await worker.start()
    await server.start("127.0.0.1", port)
    try:
        result = await drive(f"http://127.0.0.1:{port}", count)
        if WORKER:
            await worker.wait_idle(timeout=300)
        result["stored"] = await db.fetchval("SELECT COUNT(*) FROM inbox")
        return result
    finally:
        await server.stop()
        await worker.stop()
        await db.stop()


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--transactions", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds per path")
    parser.add_argument("--no-worker", action="store_true", help="measure the endpoint alone")
    args = parser.parse_args()
    n = args.transactions
    print(
        f"{n} transactions x {EVENTS_PER_TXN} events, one in flight, loopback HTTP;"
        f" {args.rounds} rounds, paths alternating, median round shown\n"
    )
    name = f"la_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn())
    labels = [
        "mautrix AppService, no-op handler (baseline)",
        "letta-appservice, SQLite (durable)",
        "letta-appservice, PostgreSQL (durable)",
    ]
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    try:
        for round_no in range(args.rounds):
            # Machine noise moves all paths alike when they alternate within one run.
            with tempfile.TemporaryDirectory() as tmp:
                await conn.execute(f'CREATE DATABASE "{name}{round_no}"')
                pg = database_url(f"{name}{round_no}")
                results[labels[0]].append(await run_baseline(n))
                results[labels[1]].append(await run_durable(f"sqlite:{tmp}/b.db", n))
                results[labels[2]].append(await run_durable(pg, n))
    finally:
        for round_no in range(args.rounds):
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}{round_no}" WITH (FORCE)')
        await conn.close()
    expected = (n + 20) * EVENTS_PER_TXN
    for label in labels[1:]:
        for r in results[label]:
            assert r["stored"] == expected, f"{label}: stored {r['stored']} of {expected}"
    median = {
        label: sorted(rs, key=lambda r: r["events_per_s"])[len(rs) // 2]
        for label, rs in results.items()
    }
    baseline = median[labels[0]]["events_per_s"]
    print(f"{'path':48} {'events/s':>10} {'ack p50':>9} {'ack p99':>9} {'x baseline':>10}")
    for label, r in median.items():
        print(
            f"{label:48} {r['events_per_s']:10.0f} {r['p50_ms']:7.2f}ms {r['p99_ms']:7.2f}ms"
            f" {r['events_per_s'] / baseline:10.2f}"
        )
    per_round = [
        f"{results[labels[i]][k]['events_per_s'] / results[labels[0]][k]['events_per_s']:.2f}"
        for k in range(args.rounds)
        for i in (1, 2)
    ]
    print(f"\nratios per round (SQLite, PostgreSQL): {', '.join(per_round)}")
    print("all events stored exactly once")


if __name__ == "__main__":
    asyncio.run(main())
