"""What a command handler gets: the bridge's services and the invocation (who, where, args)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

import attrs
from mautrix.appservice import AppServiceAPI, IntentAPI

from ..config import Config
from ..db.agent import AgentRow, AgentStore
from ..db.bridge_state import BridgeState
from ..db.inbox import InboxStore
from ..db.room import RoomStore
from ..letta.client import LettaClient
from ..matrix.puppets import Puppets
from ..permissions import Permissions
from ..tools.sync import ToolSync
from .args import Args, CommandResult, md_code, resolve_agent

if TYPE_CHECKING:
    from ..reconcile.reconciler import Reconciler


class Scheduler(Protocol):
    async def run_now(
        self, full: bool = False, *, first: Callable[[], Awaitable[None]] | None = None
    ) -> Any: ...


class RunningJob(Protocol):
    sender: str


class Conversations(Protocol):
    async def cancel(self, agent_id: str, notice: str = ...) -> bool: ...

    def running(self, agent_id: str) -> RunningJob | None: ...


class RoomConversations(Protocol):
    async def start_fresh(self, room_id: str, agent_id: str | None = None) -> bool: ...


@attrs.define
class Services:
    """The bridge parts commands use (the app builds them)."""

    config: Config
    permissions: Permissions
    bot_intent: IntentAPI
    bot_api: AppServiceAPI
    agents: AgentStore
    rooms: RoomStore
    state: BridgeState
    inbox: InboxStore
    letta: LettaClient
    reconciler: Reconciler
    scheduler: Scheduler
    conversations: Conversations
    room_conversations: RoomConversations
    puppets: Puppets  # its per-puppet lock keeps a reset and a pass apart
    started_at: float
    tools: ToolSync | None = None  # the agents' Matrix tools (None: not wired, as in tests)

    @property
    def domain(self) -> str:
        return self.config.homeserver.domain


@attrs.define
class CommandContext:
    """One command being run: the services, who typed it, where, and its arguments."""

    services: Services
    sender: str
    room_id: str
    level: str
    args: Args
    prefix: str  # "" in the sender's management room, else the command prefix
    event_id: str = ""

    async def agent(self, index: int = 0) -> AgentRow | CommandResult:
        """Resolve the ``<agent>`` argument at ``index`` against the stored agents."""
        query = self.args.get(index) or ""
        return resolve_agent(query, await self.services.agents.all())

    def code(self, name: str) -> str:
        """A command as the user would type it here, in backticks."""
        return md_code(f"{self.prefix} {name}" if self.prefix else name)


def room_link(room_id_or_alias: str, domain: str) -> str:
    """A matrix.to link; room ids need a ``via`` server to be joinable from the link."""
    if room_id_or_alias.startswith("!"):
        return f"https://matrix.to/#/{room_id_or_alias}?via={domain}"
    return f"https://matrix.to/#/{room_id_or_alias}"
