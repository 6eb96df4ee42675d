"""Reconciler benchmark: provision agents into a real Synapse from the fake Letta, then time
steady-state passes. Prints wall time, homeserver requests per agent, logins and RSS.

    .venv/bin/python bench/reconcile.py [--agents 56] [--rounds 3] [--process-agents 1000]
                                        [--steady 1000 10000] [--database sqlite|postgres]

``--agents``: provisioned by an App in this process (requests and logins counted per path),
``--rounds`` times, each round right after the homeserver's floor for the same work
(bench/reconcile_floor.py); the median and the bridge/floor ratio are printed, with the CPU
Synapse spent in each.
``--process-agents``: provisioned by the real ``letta-appservice`` command in its own process,
so its RSS is the appservice's alone; logins are checked afterwards on the homeserver (a login
leaves a device behind, appservice registration does not).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import resource
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
from ruamel.yaml import YAML

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.reconcile_floor import NoopAppservice, provision_floor
from letta_appservice.app import App
from letta_appservice.config import merge_sections
from letta_appservice.db.bridge_state import BridgeState
from letta_appservice.db.database import DatabaseURL, create_database
from letta_appservice.matrix.registration import write_registration
from tests.harness.apps import Apps, Bridge
from tests.harness.config import INSTANCES
from tests.harness.fake_letta import FakeLetta
from tests.harness.postgres import admin_dsn
from tests.harness.postgres import database_url as pg_url
from tests.harness.synapse import SynapseServer


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb() -> float:
    """Current resident set size of this process (the appservice runs in it)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def paths(app: App, suffix: str) -> int:
    return sum(1 for _m, p in app.recent_matrix_requests if p.endswith(suffix))


async def provision(
    synapse: SynapseServer, database: str, count: int, concurrency: int
) -> dict[str, Any]:
    letta = FakeLetta()
    await letta.start()
    apps = Apps(synapse.url, letta.url, ready_timeout=120)
    try:
        # The space exists; no agents yet.
        app = await apps.start(database, namespace=Bridge(), first_pass=True)
        app.reconciler._concurrency = concurrency
        for n in range(count):
            letta.add_agent(f"Agent {n:05}", description=f"Benchmark agent {n}")
        app.recent_matrix_requests = type(app.recent_matrix_requests)(maxlen=count * 10)
        cpu, began = cpu_s(synapse.pid), time.perf_counter()
        summary = await app.scheduler.run_now()
        wall = time.perf_counter() - began
        synapse_cpu = cpu_s(synapse.pid) - cpu
        assert summary.result == "ok" and summary.changes == {"create": count}, summary
        return {
            "agents": count,
            "wall_s": wall,
            "requests": summary.matrix_requests,
            "per_agent": summary.matrix_requests / count,
            "logins": paths(app, "/login"),
            "rss_mb": rss_mb(),
            "synapse_cpu_s": synapse_cpu,
        }
    finally:
        await apps.close()
        await letta.stop()


async def steady(synapse: SynapseServer, database: str, count: int) -> dict[str, Any]:
    """A pass over ``count`` agents that are all provisioned already: rows are written
    straight into the database (provisioning 10,000 rooms would take Synapse an hour)."""
    letta = FakeLetta()
    await letta.start()
    apps = Apps(synapse.url, letta.url, ready_timeout=120)
    try:
        app = await apps.start(database, namespace=Bridge(), first_pass=True)
        settings = app.reconciler.settings
        rows = []
        for n in range(count):
            agent = letta.add_agent(f"Agent {n:05}", description=f"Benchmark agent {n}")
            name = settings.templates.render(settings.templates.room_name, agent.name, agent.id)
            rows.append(
                (agent.id, settings.mxid(agent.id), agent.name, agent.description,
                 f"!bench{n}:test.local", "active", False, name, name,
                 agent.description, True, n, n)
            )  # fmt: skip
        await app.db.executemany(
            "INSERT INTO agent (agent_id, mxid, name, description, room_id, state, paused,"
            " displayname, room_name, topic, in_space, created_at, updated_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
            rows,
        )
        times = []
        for _ in range(3):
            began = time.perf_counter()
            summary = await app.scheduler.run_now()
            times.append(time.perf_counter() - began)
            assert summary.result == "ok" and summary.changes == {}, summary
            assert summary.matrix_requests == 0, summary
        return {"agents": count, "wall_s": min(times), "requests": summary.matrix_requests}
    finally:
        await apps.close()
        await letta.stop()


def process_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


async def last_pass(database: str, after: float) -> dict[str, Any]:
    """The subprocess's last pass summary (bridge_state) once one started after ``after``."""
    db = create_database(DatabaseURL.parse(database))
    await db.start()
    try:
        while True:
            try:
                summary = await BridgeState(db).get("last_reconcile")
            except Exception:
                summary = None
            if summary and summary["started_at"] > after:
                return summary
            await asyncio.sleep(0.5)
    finally:
        await db.stop()


async def provision_process(
    synapse: SynapseServer, database: str, count: int, tmp: str
) -> dict[str, Any]:
    """The real command in its own process: RSS idle, provisioning ``count`` agents on a
    timer pass, RSS after, then one more (steady) pass."""
    letta = FakeLetta()
    await letta.start()
    bridge = Bridge()
    data = merge_sections(
        INSTANCES["letta"].config_data(synapse.url, database, letta.url),
        {"bridge": bridge.overrides(), "letta": {"sync_interval": 3}},
    )
    config = Path(tmp) / f"config-{bridge.tag}.yaml"
    with config.open("w") as f:
        YAML().dump(data, f)
    log = (Path(tmp) / f"appservice-{bridge.tag}.log").open("wb")
    began = time.time()
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "letta_appservice", "-c", str(config),
        cwd=Path(tmp), stdout=log, stderr=log,
    )  # fmt: skip
    try:
        await asyncio.wait_for(last_pass(database, began), 120)
        idle = process_rss_mb(proc.pid)
        for n in range(count):
            letta.add_agent(f"Agent {n:05}", description=f"Benchmark agent {n}")
        mark = time.time()
        while True:
            summary = await last_pass(database, mark)
            mark = summary["started_at"]
            if summary["changes"]:
                break
        assert summary["result"] == "ok" and summary["changes"] == {"create": count}, summary
        rss = process_rss_mb(proc.pid)
        steady = await last_pass(database, mark)
        assert steady["changes"] == {} and steady["matrix_requests"] == 0, steady
        admin = await synapse.register_user(f"bench_{bridge.tag}", admin=True)
        devices = 0
        for n, agent_id in enumerate(letta.agents):
            if n % 10 == 0:  # every tenth puppet
                path = f"/_synapse/admin/v2/users/{quote(bridge.mxid(agent_id))}/devices"
                devices += (await admin.request("GET", path))["total"]
        await admin.close()
        return {
            "agents": count,
            "wall_s": summary["duration"],
            "requests": summary["matrix_requests"],
            "per_agent": summary["matrix_requests"] / count,
            "devices": devices,
            "rss_idle_mb": idle,
            "rss_mb": rss,
            "steady_s": steady["duration"],
        }
    finally:
        proc.terminate()
        await proc.wait()
        log.close()
        await letta.stop()


async def database_url(kind: str, tmp: str) -> str:
    if kind == "sqlite":
        return f"sqlite:{tmp}/bench-{uuid.uuid4().hex[:8]}.db"
    name = f"la_bench_{uuid.uuid4().hex[:8]}"
    conn = await asyncpg.connect(admin_dsn())
    await conn.execute(f'CREATE DATABASE "{name}"')
    await conn.close()
    return pg_url(name)


async def provision_rounds(
    synapse: SynapseServer, noop: NoopAppservice, args: argparse.Namespace, count: int, tmp: str
) -> None:
    """Floor and bridge, ``args.rounds`` times on the same Synapse, in alternating order (the
    homeserver's database grows as they go); each round and the medians."""

    async def bridge() -> dict[str, Any]:
        database = await database_url(args.database, tmp)
        return await provision(synapse, database, count, args.concurrency)

    ratios, walls = [], []
    for n in range(1, args.rounds + 1):
        r = await bridge() if n % 2 == 0 else {}
        cpu = cpu_s(synapse.pid)
        f = await provision_floor(synapse.url, noop, count, args.concurrency)
        floor_cpu = cpu_s(synapse.pid) - cpu
        r = r or await bridge()
        ratios.append(r["wall_s"] / f["wall_s"])
        walls.append(r["wall_s"])
        print(
            f"round {n}: provision {count} agents: {r['wall_s']:6.2f} s"
            f" ({r['wall_s'] / count * 1000:.0f} ms/agent,"
            f" Synapse CPU {r['synapse_cpu_s']:.2f} s),"
            f" {r['requests']} requests = {r['per_agent']:.2f}/agent, logins {r['logins']},"
            f" RSS after {r['rss_mb']:.0f} MB | floor {f['wall_s']:6.2f} s"
            f" (Synapse CPU {floor_cpu:.2f} s, {f['requests']} requests) | ratio {ratios[-1]:.2f}"
        )
    print(
        f"provision {count} agents: median {statistics.median(walls):.2f} s,"
        f" bridge/floor median {statistics.median(ratios):.2f}"
        f" (rounds {', '.join(f'{x:.2f}' for x in ratios)})\n"
    )


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--agents", type=int, nargs="*", default=[56])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--process-agents", type=int, nargs="*", default=[1000])
    parser.add_argument("--steady", type=int, nargs="*", default=[1000, 10000])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--database", choices=["sqlite", "postgres"], default="sqlite")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    noop = NoopAppservice()
    await noop.start()
    with tempfile.TemporaryDirectory() as tmp:
        registration = INSTANCES["letta"].write_registration(Path(tmp) / "registration.yaml")
        floor_registration = Path(tmp) / "registration-floor.yaml"
        write_registration(noop.registration, floor_registration)
        began = time.perf_counter()
        synapse = await SynapseServer.start(Path(tmp) / "hs", [registration, floor_registration])
        print(f"Synapse {synapse.url} up in {time.perf_counter() - began:.1f} s")
        print(f"database: {args.database}, concurrency: {args.concurrency}\n")
        try:
            for count in args.agents:
                await provision_rounds(synapse, noop, args, count, tmp)
            for count in args.process_agents:
                database = await database_url(args.database, tmp)
                r = await provision_process(synapse, database, count, tmp)
                print(
                    f"provision {r['agents']:>6} agents (own process): {r['wall_s']:7.2f} s"
                    f" ({r['wall_s'] / count * 1000:.0f} ms/agent), {r['requests']} requests"
                    f" = {r['per_agent']:.2f}/agent, puppet devices (logins)"
                    f" {r['devices']} of every 10th; RSS idle {r['rss_idle_mb']:.0f} MB, after"
                    f" {r['rss_mb']:.0f} MB; next pass {r['steady_s'] * 1000:.0f} ms"
                )
            for count in args.steady:
                r = await steady(synapse, await database_url(args.database, tmp), count)
                print(
                    f"steady pass {r['agents']:>6} agents: {r['wall_s'] * 1000:7.0f} ms,"
                    f" {r['requests']} homeserver requests"
                )
        finally:
            await synapse.stop()
            await noop.stop()


if __name__ == "__main__":
    asyncio.run(main())
