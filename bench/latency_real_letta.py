"""Conversation round trip against the real Letta 0.16.8 server (its deterministic fake LLM)
next to the fake Letta, same Synapse, same run: a person's message until the agent's reply is
seen via /sync, one message at a time, alternating between the two.

    .venv/bin/python bench/latency_real_letta.py [--messages 40] [--streaming]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from letta_appservice.app import App
from tests.harness.config import make_config, write_registrations
from tests.harness.fake_letta import FakeLetta
from tests.harness.real_letta import LettaAdmin, RealLetta
from tests.harness.synapse import SynapseServer


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]


async def bridged_room(app: App, agent_id: str) -> tuple[str, str]:
    await app.scheduler.run_now()
    row = await app.agents.get(agent_id)
    assert row is not None and row.room_id is not None
    return row.room_id, row.mxid


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="bench-real-letta-"))
    synapse = await SynapseServer.start(work / "hs", write_registrations(work))
    real = await RealLetta.start()
    fake = FakeLetta()
    await fake.start()
    apps: list[App] = []
    try:
        admin = await synapse.register_user("admin", admin=True, displayname="Admin")
        letta = LettaAdmin(real.url)
        real_id = await letta.create_agent("Real")
        await letta.close()
        fake_id = fake.add_agent("Fake").id
        rooms: dict[str, tuple[str, str]] = {}
        for name, instance, url, agent_id in (
            ("real", "letta", real.url, real_id),
            ("fake", "lab", fake.url, fake_id),
        ):
            over: dict[str, Any] = {"letta": {"streaming": args.streaming}}
            app = App(make_config(synapse.url, f"sqlite:{work / name}.db", url, instance, **over))
            apps.append(app)
            await app.start()
            await app.wait_ready(timeout=60)
            rooms[name] = await bridged_room(app, agent_id)
            await admin.join(rooms[name][0])
        times: dict[str, list[float]] = {"real": [], "fake": []}
        for i in range(args.messages + 2):  # the first two (new agent) are not counted
            for name, (room, puppet) in rooms.items():
                began = time.monotonic()
                sent = await admin.send_text(room, f"message {i}")
                await admin.wait_for_event(
                    room,
                    lambda e, s=sent, p=puppet: (
                        e["sender"] == p
                        and e["content"]["m.relates_to"]["m.in_reply_to"]["event_id"] == s
                    ),
                    timeout=120,
                )
                if i >= 2:
                    times[name].append((time.monotonic() - began) * 1000)
        mode = "streamed" if args.streaming else "plain"
        for name, ms in times.items():
            print(
                f"{name} Letta ({mode}): p50 {statistics.median(ms):6.1f} ms  "
                f"p99 {pct(ms, 99):6.1f} ms  ({len(ms)} messages)"
            )
        await admin.close()
    finally:
        for app in apps:
            await app.stop()
        await fake.stop()
        await real.stop()
        await synapse.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--streaming", action="store_true")
    asyncio.run(main(parser.parse_args()))
