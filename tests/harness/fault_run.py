"""The fault suite's run: generated traffic pushed through the real transaction endpoint of the
real appservice process, while a ChaosProxy fails the homeserver and Letta at random and the
process is killed with SIGKILL and started again on the same database; then the accounting.

Why a stub homeserver and not the session's Synapse: the traffic comes from thousands of
senders and rooms Synapse never saw (replies to events it does not have, rooms nobody created),
and 10,000 events with their answers through Synapse would not fit the few minutes CI gives the
suite on two cores. What is tested is the bridge's promises under faults, and the stub keeps
what they rest on: a send with a txn id already used gives back the first event (as Synapse
does), so an answer posted twice under two txn ids shows as two events."""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import sqlite3
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import attrs

from letta_appservice.matrix.ids import agent_mxid
from tests.harness import letta_replies as lr
from tests.harness.bridge_process import BridgeProcess
from tests.harness.chaos import ChaosProxy, FaultRates
from tests.harness.config import free_port
from tests.harness.fake_letta import FakeLetta
from tests.harness.fault_traffic import (
    ANSWER,
    BRIDGED_AT,
    COMMAND,
    DOMAIN,
    MEDIA,
    QUIET,
    REFUSAL,
    Generated,
    Push,
    Traffic,
)
from tests.harness.stub_homeserver import Sent, StubHomeserver, seed_agent_rooms

HS_TOKEN = "fault-hs-token-0123456789abcdef"
AS_TOKEN = "fault-as-token-0123456789abcdef"
TEMPLATE = "agent_{agent_id}"
BOT = f"@letta:{DOMAIN}"
MAX_BODY = 2 * 1024 * 1024
LETTA_TIMEOUT = 3.0
REFUSED_PART = 10_002  # letta_appservice.chat.content
HOMESERVER_FAULTS = FaultRates(error=0.03, rate_limit=0.03, reset=0.015, lost=0.015, slow=0.01)
LETTA_FAULTS = FaultRates(error=0.04, reset=0.015, lost=0.015, hang=0.01, cut=0.1)


@attrs.define
class Report:
    seed: int
    events: int = 0
    pushes: int = 0
    kills: int = 0
    seconds: float = 0.0
    kinds: Counter[str] = attrs.field(factory=Counter)
    states: Counter[str] = attrs.field(factory=Counter)
    faults: Counter[str] = attrs.field(factory=Counter)
    answers: int = 0
    problems: list[str] = attrs.field(factory=list)

    def summary(self) -> str:
        return (
            f"seed {self.seed}: {self.events} events in {self.pushes} transactions, "
            f"{self.kills} SIGKILLs, {self.seconds:.0f} s; generated {dict(self.kinds)}; "
            f"inbox {dict(self.states)}; faults {dict(self.faults)}; {self.answers} answers"
        )


def _responder(rng: random.Random) -> Any:
    def answer(_agent: Any, text: str) -> list[dict[str, Any]]:
        r = rng.random()
        first = lr.assistant(f"Answer to {len(text)} characters.")
        if r < 0.2:
            return [lr.reasoning("thinking"), first, lr.assistant("And one more thing.")]
        return [first]

    return answer


def _config(hs: str, letta: str, database: str, port: int) -> dict[str, Any]:
    return {
        "homeserver": {"address": hs, "domain": DOMAIN},
        "appservice": {
            "id": "letta",
            "address": f"http://127.0.0.1:{port}",
            "hostname": "127.0.0.1",
            "port": port,
            "as_token": AS_TOKEN,
            "hs_token": HS_TOKEN,
            "database": database,
            "max_body_size": MAX_BODY,
        },
        "letta": {"base_url": letta, "sync_interval": 3600, "timeout": LETTA_TIMEOUT},
        "bridge": {"username_template": TEMPLATE, "permissions": {DOMAIN: "user"}},
        "logging": {"level": "INFO"},
    }


class FaultRun:
    def __init__(
        self, seed: int, events: int, kills: int, database: str, workdir: Path, agents: int = 20
    ) -> None:
        self.seed, self.events, self.kills = seed, events, kills
        self.database, self.workdir, self.agent_count = database, workdir, agents
        self.rng = random.Random(seed)
        self.report = Report(seed)
        self.letta = FakeLetta()
        self.hs = StubHomeserver(DOMAIN)
        self.hs_proxy: ChaosProxy | None = None
        self.letta_proxy: ChaosProxy | None = None
        self.process: BridgeProcess | None = None
        self.rooms: dict[str, str] = {}  # agent room -> puppet

    async def run(self) -> Report:
        started = time.monotonic()
        try:
            await self._setup()
            traffic = Traffic(random.Random(self.seed), self.rooms, MAX_BODY)
            pushes: list[Push] = []
            while self.report.events < self.events:
                pushes.append(traffic.push(pushes))
                self.report.events += len(pushes[-1].events)
            self.report.pushes, self.report.kinds = len(pushes), traffic.kinds
            await self._drive(pushes)
            await self._drain(pushes)
            await self._account(pushes)
        finally:
            await self._teardown()
            self.report.seconds = time.monotonic() - started
        return self.report

    async def _setup(self) -> None:
        self.letta.responder = _responder(random.Random(self.seed + 3))
        await self.letta.start()
        await self.hs.start()
        self.hs_proxy = ChaosProxy(self.hs.url, random.Random(self.seed + 1), HOMESERVER_FAULTS)
        self.letta_proxy = ChaosProxy(
            self.letta.url, random.Random(self.seed + 2), LETTA_FAULTS, LETTA_TIMEOUT + 1
        )
        await self.hs_proxy.start()
        await self.letta_proxy.start()
        seeded = []
        for n in range(self.agent_count):
            agent = self.letta.add_agent(f"Agent {n}")
            room = f"!agentroom{n}:{DOMAIN}"
            self.rooms[room] = agent_mxid(TEMPLATE, DOMAIN, agent.id)
            seeded.append((agent.id, agent.name, self.rooms[room], room))
        await seed_agent_rooms(self.database, seeded, BRIDGED_AT)
        self.hs.joined.update(self.rooms)
        config = _config(self.hs_proxy.url, self.letta_proxy.url, self.database, free_port())
        self.process = BridgeProcess(self.workdir, config)
        await self._start()

    async def _start(self) -> None:
        assert self.process is not None
        # Streamed and plain turns both: the operator may change it between two starts.
        streaming = self.rng.random() < 0.5
        await self.process.start("/health", letta={"streaming": streaming})

    async def _kill_and_restart(self, pause: float) -> None:
        assert self.process is not None
        await asyncio.sleep(pause)
        await self.process.kill(signal.SIGKILL)
        self.report.kills += 1
        await asyncio.sleep(self.rng.random())
        await self._start()

    async def _drive(self, pushes: list[Push]) -> None:
        """Push every transaction as a homeserver does: one at a time, the same one again
        until it is answered (200, or a 4xx for a hostile one); kills land meanwhile."""
        kill_at = set(self.rng.sample(range(len(pushes)), min(self.kills - 1, len(pushes))))
        killer: asyncio.Task[None] | None = None
        async with aiohttp.ClientSession() as http:
            for n, push in enumerate(pushes):
                if n in kill_at:
                    if killer is not None:  # a slow restart must not swallow the next kill
                        await killer
                    killer = asyncio.create_task(self._kill_and_restart(self.rng.random() / 4))
                status = await self._put(http, push)
                if push.valid and status != 200:
                    self.report.problems.append(f"transaction {push.txn_id}: {status}, not 200")
                if not push.valid and not 400 <= status < 500:
                    self.report.problems.append(f"hostile transaction {push.txn_id}: {status}")
        if killer is not None:
            await killer
        # One more while the answers are still being worked on.
        await self._kill_and_restart(self.rng.uniform(0.5, 3))

    async def _put(self, http: aiohttp.ClientSession, push: Push) -> int:
        assert self.process is not None
        token = HS_TOKEN if push.token_ok else HS_TOKEN[::-1]
        url = f"{self.process.url}/_matrix/app/v1/transactions/{push.txn_id}"
        headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.put(url, data=push.body, headers=headers) as resp:
                    await resp.read()
                    if resp.status < 500:
                        return resp.status
            await asyncio.sleep(0.05)
        return 0

    async def _drain(self, pushes: list[Push]) -> None:
        """Faults for a little longer, then none: wait until every event is finished and
        every message that wants an answer has one."""
        await asyncio.sleep(5)
        assert self.hs_proxy is not None and self.letta_proxy is not None
        self.hs_proxy.calm()
        self.letta_proxy.calm()
        wanted = {
            g.event_id
            for g in _expected(pushes).values()
            if g.expect in (ANSWER, COMMAND) and g.event_id
        }
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            states = Counter(state for state, _ in (await self._rows()).values())
            answered = {s.reply_to for s in self.hs.sent}
            if not states["pending"] and not states["processing"] and wanted <= answered:
                return
            await asyncio.sleep(1)

    async def _rows(self) -> dict[str, tuple[str, str | None]]:
        sql = "SELECT event_id, state, error FROM inbox"
        if self.database.startswith("sqlite:"):
            path = self.database.removeprefix("sqlite:")
            with contextlib.closing(sqlite3.connect(path, timeout=30)) as conn:
                rows = conn.execute(sql).fetchall()
        else:
            conn = await asyncpg.connect(self.database)
            try:
                rows = [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()
        return {r[0]: (r[1], r[2]) for r in rows}

    async def _account(self, pushes: list[Push]) -> None:
        assert self.process is not None
        await self.process.kill(signal.SIGTERM)
        rows = await self._rows()
        assert self.hs_proxy is not None and self.letta_proxy is not None
        self.report.faults = self.hs_proxy.faults + self.letta_proxy.faults
        self.report.states = Counter(state for state, _ in rows.values())
        self.report.answers = len(self.hs.sent)
        self.report.problems += account(pushes, rows, self.hs.sent, self.rooms)

    async def _teardown(self) -> None:
        if self.process is not None:
            await self.process.kill(signal.SIGTERM)
        for proxy in (self.hs_proxy, self.letta_proxy):
            if proxy is not None:
                await proxy.stop()
        await self.hs.stop()
        await self.letta.stop()


def _expected(pushes: list[Push]) -> dict[str, Generated]:
    """Each event id's first storable occurrence in a transaction that was taken."""
    first: dict[str, Generated] = {}
    for push in pushes:
        if push.valid:
            for gen in push.events:
                if gen.storable and gen.event_id is not None:
                    first.setdefault(gen.event_id, gen)
    return first


def _part(txn: str) -> int:
    """The part number in an answer's txn id (letta.<digest>.<part>[suffix]); -1 otherwise."""
    pieces = txn.split(".")
    return int(pieces[2]) if pieces[0] == "letta" and len(pieces) > 2 else -1


def account(
    pushes: list[Push],
    rows: dict[str, tuple[str, str | None]],
    sent: list[Sent],
    rooms: dict[str, str],
) -> list[str]:
    """Every event accounted for, every answer exactly once: the problems found."""
    problems: list[str] = []
    expected = _expected(pushes)
    for event_id, gen in expected.items():
        state, error = rows.get(event_id, ("lost", None))
        if state == "failed" and gen.expect == QUIET:
            problems.append(f"{event_id!r} set aside by a handler error: {error}")
        elif state != "done":
            problems.append(f"{event_id!r} ({gen.expect}) is {state}: {error}")
    for event_id in rows.keys() - expected.keys():
        problems.append(f"{event_id!r} stored, but it was never taken in a transaction")
    replies: dict[str, list[Sent]] = defaultdict(list)
    for s in sent:
        replies[s.reply_to or ""].append(s)
    once: dict[tuple[str, str, str], list[str]] = defaultdict(list)  # refusals, media notices
    for event_id, gen in expected.items():
        got = replies.pop(event_id, [])
        if gen.expect in (ANSWER, MEDIA):  # media reaches the agent, or gets one notice
            parts = Counter(_part(s.txn_id) for s in got if s.user_id == rooms[gen.room_id])
            twice = [p for p, n in parts.items() if n > 1]
            first = 0 in parts or (gen.expect == MEDIA and len(parts) == 1)
            if not first or twice or len(got) != sum(parts.values()):
                problems.append(f"{event_id!r}: answer parts {dict(parts)} of {len(got)} events")
        elif gen.expect == COMMAND:
            if len(got) != 1:
                problems.append(f"command {event_id!r} got {len(got)} replies")
        elif gen.expect == REFUSAL:
            once[gen.expect, gen.room_id, gen.sender] += [s.txn_id for s in got]
        elif got:
            problems.append(f"quiet {event_id!r} got {len(got)} replies: {got[0].content}")
    for (kind, room, sender), txns in once.items():
        if [_part(t) for t in txns] != [REFUSED_PART]:
            problems.append(f"{kind} of {sender} in {room}: {txns}, not one notice")
    replies.pop("", None)  # edits and the bot's own messages answer no one
    for event_id, got in replies.items():
        problems.append(f"{len(got)} events answer {event_id!r}, which wants none")
    return problems
