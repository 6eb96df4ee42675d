"""The one way tests and benchmarks start the appservice: `Apps` starts `App`s in-process
against a homeserver and a Letta and stops each exactly once; `Bridge` gives a test a puppet
namespace of its own inside an instance's registered one."""

from __future__ import annotations

import uuid
from typing import Any

from letta_appservice.app import App
from letta_appservice.matrix.ids import agent_alias, agent_mxid
from tests.harness.config import INSTANCES, SERVER_NAME, make_config


class Bridge:
    """A fresh puppet namespace inside an instance's registered one (``agent_t<hex>_…``), so
    each test gets its own space alias and puppets on the session's Synapse."""

    def __init__(self, instance: str = "letta") -> None:
        self.instance = instance
        self.tag = uuid.uuid4().hex[:8]
        prefix = INSTANCES[instance].username_template.removesuffix("_{agent_id}")
        self.template = f"{prefix}_t{self.tag}_{{agent_id}}"
        self.space_name = f"Agents {self.tag}"

    def overrides(self, **bridge: Any) -> dict[str, Any]:
        return {"username_template": self.template, "space_name": self.space_name, **bridge}

    def mxid(self, agent_id: str) -> str:
        return agent_mxid(self.template, SERVER_NAME, agent_id)

    def alias(self, agent_id: str) -> str:
        return agent_alias(self.template, SERVER_NAME, agent_id)

    @property
    def space_alias(self) -> str:
        return agent_alias(self.template, SERVER_NAME, "space")


class Apps:
    """Starts Apps on one homeserver and one Letta; each is stopped exactly once (restarts
    included), the rest by `close` (or leaving ``async with``), newest first."""

    def __init__(
        self,
        homeserver_url: str,
        letta_url: str,
        database: str | None = None,
        ready_timeout: float = 60,
    ) -> None:
        self.homeserver_url = homeserver_url
        self.letta_url = letta_url
        self.database = database
        self.ready_timeout = ready_timeout
        self.running: list[App] = []

    async def start(
        self,
        database: str | None = None,
        *,
        instance: str = "letta",
        namespace: Bridge | None = None,
        ready: bool = True,
        first_pass: bool = False,
        **over: Any,
    ) -> App:
        """An App of test ``instance`` (or of the namespace's instance, with the namespace's
        bridge settings under ``over["bridge"]``), on ``database`` or the default one; ``over``
        holds config sections merged on top (``letta={...}``, ``homeserver={...}``).
        ``ready``: waits until the homeserver link works both ways; ``first_pass``: also for
        the start-up reconcile pass."""
        if namespace is not None:
            instance = namespace.instance
            over["bridge"] = namespace.overrides(**over.get("bridge", {}))
        database = database or self.database
        assert database is not None, "no database given and no default"
        app = App(make_config(self.homeserver_url, database, self.letta_url, instance, **over))
        self.running.append(app)
        await app.start()
        if ready or first_pass:
            await app.wait_ready(timeout=self.ready_timeout)
        if first_pass:
            await app.scheduler.wait_for_passes(1)
        return app

    async def stop(self, app: App) -> None:
        self.running.remove(app)
        await app.stop()

    async def close(self) -> None:
        for app in reversed(self.running):
            await app.stop()
        self.running.clear()

    async def __aenter__(self) -> Apps:
        return self

    async def __aexit__(self, *_exc_info: object) -> None:
        await self.close()
