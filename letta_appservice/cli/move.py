"""`letta-appservice move-homeserver`: the bridge now runs on another homeserver (Synapse to
Tuwunel, a rebuilt server). Check that the rooms the database records are not on it, set the
old state aside, then provision every agent there with one full reconcile pass: same agents and
puppets, new rooms and a new space."""

from __future__ import annotations

import aiohttp

from ..app import App
from ..config import Config
from ..db.agent import AgentStore
from ..db.bridge_state import BridgeState
from ..db.database import DatabaseURL, open_database
from ..legacy.checks import ImportAborted, check_homeserver, refuse_if_running
from ..matrix import rooms
from ..matrix.state_store import StateStore
from ..reconcile import homeserver
from ..reconcile.homeserver import HomeserverChanged, Move
from ..reconcile.plan import ReconcileSettings
from ..reconcile.reconciler import PassSummary


class MoveAborted(Exception):
    """Nothing was changed: the appservice runs, the homeserver refuses us, nothing to move."""


async def set_aside(config: Config) -> tuple[str, Move]:
    """The first half, refused unless the stored state is not this homeserver's: why it is
    not, and what was set aside."""
    address = config.homeserver.address
    async with aiohttp.ClientSession(middlewares=(rooms.RateLimitMiddleware(),)) as http:
        try:
            await refuse_if_running(http, config)
        except ImportAborted as e:
            raise MoveAborted(str(e)) from None
        db = await open_database(DatabaseURL.parse(config.appservice.database), in_child=False)
        try:
            state_store = StateStore(db)
            await StateStore.upgrade_table.upgrade(db)
            api = rooms.appservice_api(config, state_store, http, retries=0)
            try:
                await check_homeserver(api, address)
            except ImportAborted as e:
                raise MoveAborted(str(e)) from None
            settings = ReconcileSettings.from_config(config)
            try:
                await homeserver.check(api, BridgeState(db), AgentStore(db), settings, address)
            except HomeserverChanged as e:
                return str(e), await homeserver.set_aside(db, settings)
            raise MoveAborted(
                f"the rooms the database records are on the homeserver at {address}: "
                "nothing to move"
            )
        finally:
            await db.stop()


async def move_homeserver(config: Config) -> tuple[bool, list[str]]:
    """Both halves: whether every agent was provisioned, and the report's lines. A failed pass
    (Letta or the homeserver down) leaves the rest to the appservice's own passes once it
    runs; nothing is set aside twice."""
    reason, move = await set_aside(config)
    app = App(config)
    try:
        summary = await app.provision()
        space_id = app.reconciler.space.id
    finally:
        await app.stop()
    return summary.result == "ok", report(reason, move, summary, space_id)


def report(reason: str, move: Move, summary: PassSummary, space_id: str | None) -> list[str]:
    kinds = ", ".join(f"{n} {kind}" for kind, n in sorted(move.rooms.items())) or "none"
    created = summary.changes.get("create", 0)
    lines = [
        f"The database was not this homeserver's: {reason}.",
        f"Set aside (kept in the database, marked moved): rooms: {kinds}; "
        f"the space: {move.space_id or 'none'}.",
    ]
    if summary.result == "ok":
        lines.append(
            f"Provisioned on {move.to_server}: {created} agents with their puppets and new "
            f"rooms, in the new space {space_id}. Start the appservice."
        )
    else:
        lines.append(
            f"Provisioning stopped: {summary.error} ({created} agents done). Start the "
            "appservice: its reconcile passes provision the rest."
        )
    return lines
