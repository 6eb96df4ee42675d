"""Agents act in Matrix: the Matrix tools registered in Letta and attached to agents
(``sync``), the tool API they call on the appservice port (``api``), what they do in Matrix
(``matrix``: rooms, messages, direct chats; ``talk``: agents talking to agents) and the send
API for scripts. ``source`` is the tools' own code, as Letta runs it."""

from __future__ import annotations

from aiohttp import web
from mautrix.util.async_db import Database

from ..chat.turn import Conversations
from ..config import Config
from ..db.agent import AgentStore
from ..db.agent_tool import AgentToolStore
from ..db.invited_agent import InvitedAgentStore
from ..db.room import RoomStore
from ..identity import Identity
from ..letta import LettaClient
from ..letta.tools import LettaTools
from ..matrix.puppets import Puppets
from ..metrics import Metrics
from ..permissions import Permissions
from .api import ToolApi
from .matrix import MatrixActions
from .sync import ToolSync
from .talk import Talks

__all__ = ["ToolSync", "Tools", "tool_sync"]


def tool_sync(config: Config, letta: LettaClient, db: Database) -> ToolSync:
    """Letta's side of the tools (the reconciler runs it after each pass)."""
    return ToolSync(
        config=config.tools,
        address=config.appservice.address,
        letta=LettaTools(letta),
        store=AgentToolStore(db),
    )


class Tools:
    """Matrix's side of the tools: the tool API and send API routes, and their work."""

    def __init__(
        self,
        config: Config,
        *,
        sync: ToolSync,
        identity: Identity,
        permissions: Permissions,
        puppets: Puppets,
        agents: AgentStore,
        rooms: RoomStore,
        invited: InvitedAgentStore,
        conversations: Conversations,
        metrics: Metrics,
    ) -> None:
        cfg = config.tools
        self.sync = sync
        actions = MatrixActions(
            identity=identity,
            permissions=permissions,
            puppets=puppets,
            rooms=rooms,
            invited=invited,
            store=sync.store,
        )
        self.talks = Talks(
            agents=agents,
            puppets=puppets,
            conversations=conversations,
            template=config.bridge.attribution_template,
            talk_wait=cfg.talk_wait,
            max_hops=cfg.max_hops,
        )
        self.api = ToolApi(
            sync=sync,
            agents=agents,
            actions=actions,
            talks=self.talks,
            metrics=metrics,
            calls_per_minute=cfg.calls_per_minute,
            send_token=cfg.send_token,
        )

    def mount(self, app: web.Application) -> None:
        self.api.mount(app)

    async def stop(self) -> None:
        await self.talks.stop()
