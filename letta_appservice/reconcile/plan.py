"""What a reconcile pass must change: Letta's agents vs the stored rows, as a pure plan."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

import attrs

from ..config import Config
from ..db.agent import ACTIVE, DELETED, AgentRow
from ..letta.models import Agent
from ..matrix.ids import agent_alias, agent_mxid
from ..permissions import Permissions

# Kinds of change, in the words of the pass summary.
CREATE, UPDATE, ARCHIVE, RESTORE, REPAIR, RECORD = (
    "create",
    "update",
    "archive",
    "restore",
    "repair",
    "record",  # only the stored Letta name/description changed: no Matrix call
)
# Drift repairs an agent can need (besides "invite:<mxid>" for a bridge admin).
BOT, PUPPET, SPACE_CHILD, POWER, REPARENT = "bot", "puppet", "space_child", "power", "reparent"
INVITE_PREFIX = "invite:"

ARCHIVED_NOTICE = "This agent was deleted in Letta; the room is archived."
RESTORED_NOTICE = "This agent is back in Letta; the room is active again."


@attrs.frozen
class Templates:
    """How an agent's name becomes Matrix names; from the ``bridge`` config section."""

    displayname: str = "{name}"
    room_name: str = "{name}"
    archived_suffix: str = " (archived)"

    def render(self, template: str, name: str, agent_id: str) -> str:
        # An agent without a name still needs a readable label: fall back to its id.
        return template.format(name=name or agent_id).strip() or agent_id


@attrs.frozen
class ReconcileSettings:
    """The parts of the config the reconciler needs."""

    bot_mxid: str
    domain: str
    username_template: str
    space_name: str
    admins: tuple[str, ...]
    templates: Templates
    # False when the homeserver's default room version gives creators unlimited power (v12+).
    list_creator: bool = True

    @classmethod
    def from_config(cls, config: Config) -> ReconcileSettings:
        b = config.bridge
        return cls(
            bot_mxid=config.bot_mxid,
            domain=config.homeserver.domain,
            username_template=b.username_template,
            space_name=b.space_name,
            admins=tuple(Permissions(b.permissions).admins),
            templates=Templates(b.displayname_template, b.room_name_template, b.archived_suffix),
        )

    def mxid(self, agent_id: str) -> str:
        return agent_mxid(self.username_template, self.domain, agent_id)

    def alias(self, agent_id: str) -> str:
        return agent_alias(self.username_template, self.domain, agent_id)


@attrs.frozen
class Desired:
    """One agent as Matrix should show it."""

    agent_id: str
    name: str
    description: str | None
    displayname: str
    room_name: str
    topic: str  # "" = no topic


def desire(agent: Agent, templates: Templates) -> Desired:
    return Desired(
        agent_id=agent.id,
        name=agent.name,
        description=agent.description,
        displayname=templates.render(templates.displayname, agent.name, agent.id),
        room_name=templates.render(templates.room_name, agent.name, agent.id),
        topic=(agent.description or "").strip(),
    )


def desired_agents(
    agents: Iterable[Agent], templates: Templates, name_pattern: str = ""
) -> dict[str, Desired]:
    """The agents to bridge: Letta's list filtered by the configured name pattern."""
    matcher = re.compile(name_pattern) if name_pattern else None
    return {
        agent.id: desire(agent, templates)
        for agent in agents
        if matcher is None or matcher.search(agent.name)
    }


@attrs.frozen
class AgentChange:
    """Everything one agent needs this pass. ``None`` fields are left alone."""

    agent_id: str
    kind: str
    desired: Desired | None  # None: gone from Letta (archive)
    row: AgentRow | None  # None: never seen before
    displayname: str | None = None
    room_name: str | None = None
    topic: str | None = None
    space_child: bool | None = None  # True: add the m.space.child, False: remove it
    notice: str | None = None
    repairs: frozenset[str] = frozenset()

    @property
    def touches_matrix(self) -> bool:
        return self.kind != RECORD


def _differs(stored: str | None, wanted: str) -> str | None:
    return wanted if stored != wanted else None


def plan_agent(
    desired: Desired | None,
    row: AgentRow | None,
    repairs: frozenset[str],
    templates: Templates,
) -> AgentChange | None:
    """The change one agent needs, or None when Matrix and the row are up to date."""
    if desired is None:
        if row is None or row.state != ACTIVE:
            return None  # deleted agents are left as they are, drift included
        archived_name = templates.render(templates.room_name, row.name, row.agent_id)
        return AgentChange(
            row.agent_id,
            ARCHIVE,
            None,
            row,
            room_name=archived_name + templates.archived_suffix if row.room_id else None,
            space_child=False if row.room_id and row.in_space else None,
            notice=ARCHIVED_NOTICE if row.room_id else None,
        )
    agent_id = desired.agent_id
    if row is None or row.room_id is None:
        return AgentChange(
            agent_id,
            CREATE,
            desired,
            row,
            displayname=_differs(row.displayname if row else None, desired.displayname),
            space_child=True,
        )
    displayname = _differs(row.displayname, desired.displayname)
    room_name = _differs(row.room_name, desired.room_name)
    topic = _differs(row.topic, desired.topic)
    if row.state == DELETED:
        # The archive left the name with a suffix: put the plain one back whatever is stored.
        return AgentChange(
            agent_id,
            RESTORE,
            desired,
            row,
            displayname=displayname,
            room_name=desired.room_name,
            topic=topic,
            space_child=True,
            notice=RESTORED_NOTICE,
            repairs=repairs | {PUPPET},
        )
    space_child = True if not row.in_space or SPACE_CHILD in repairs else None
    if any(v is not None for v in (displayname, room_name, topic, space_child)) or repairs:
        renamed = any(v is not None for v in (displayname, room_name, topic))
        kind = UPDATE if renamed or not repairs else REPAIR
        repairs = repairs - {SPACE_CHILD}  # done by space_child
        return AgentChange(
            agent_id,
            kind,
            desired,
            row,
            displayname=displayname,
            room_name=room_name,
            topic=topic,
            space_child=space_child,
            repairs=repairs,
        )
    if (row.name, row.description) != (desired.name, desired.description):
        return AgentChange(agent_id, RECORD, desired, row)
    return None


def plan(
    desired: Mapping[str, Desired],
    rows: Iterable[AgentRow],
    dirty: Mapping[str, frozenset[str]],
    templates: Templates,
) -> list[AgentChange]:
    """Changes for every agent, stored ones first (in row order), then new ones (Letta order).

    Only call this with a complete listing: an agent missing from ``desired`` is archived.
    """
    changes: list[AgentChange] = []
    seen: set[str] = set()
    for row in rows:
        seen.add(row.agent_id)
        want = desired.get(row.agent_id)
        change = plan_agent(want, row, dirty.get(row.agent_id, frozenset()), templates)
        if change is not None:
            changes.append(change)
    for agent_id, want in desired.items():
        if agent_id not in seen:
            changes.append(plan_agent(want, None, frozenset(), templates))  # type: ignore[arg-type]
    return changes
