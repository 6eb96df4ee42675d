"""Command parsing, permission checks, <agent> resolution and reply texts (pure, no Matrix)."""

from __future__ import annotations

import pytest

from letta_appservice.commands import REGISTRY, CommandResult, dispatch
from letta_appservice.commands.args import resolve_agent
from letta_appservice.commands.info import help_text
from letta_appservice.commands.registry import Invocation, Registry, command_text, split_words
from letta_appservice.commands.summary import describe_pass, diff_rows
from letta_appservice.db.agent import DELETED, AgentRow
from letta_appservice.reconcile.reconciler import PassSummary

ALICE = AgentRow("agent-11111111-aaaa", "@agent_11111111_aaaa:t", "Alice", room_id="!a:t")
ALBERT = AgentRow("agent-22222222-bbbb", "@agent_22222222_bbbb:t", "Albert", room_id="!b:t")
BOB = AgentRow("agent-33333333-cccc", "@agent_33333333_cccc:t", "Bob", room_id="!c:t")
BOBBY = AgentRow("agent-44444444-dddd", "@agent_44444444_dddd:t", "Bobby")
OLD = AgentRow("agent-55555555-eeee", "@agent_55555555_eeee:t", "Olga", state=DELETED)
OLGA = AgentRow("agent-66666666-ffff", "@agent_66666666_ffff:t", "Olga Nova")
AGENTS = [ALICE, ALBERT, BOB, BOBBY, OLD, OLGA]


def run(text: str, level: str | None = "admin") -> Invocation | CommandResult:
    return dispatch(text, level, REGISTRY, "!letta")


# --- recognising commands -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "management", "expected"),
    [
        ("help", True, "help"),
        ("  status  ", True, "status"),
        ("!letta help", True, "help"),  # the prefix is tolerated in the management room
        ("hello there", True, "hello there"),  # every message there is a command
        ("!letta agents bo", False, "agents bo"),
        ("!LETTA version", False, "version"),
        ("help", False, None),  # elsewhere only prefixed messages are commands
        ("!lettas help", False, None),
        ("tell me about !letta", False, None),
    ],
)
def test_command_text(body: str, management: bool, expected: str | None) -> None:
    assert command_text(body, "!letta", management_room=management) == expected


def test_quoted_words_group_and_an_apostrophe_does_not_break_parsing() -> None:
    assert split_words('room "Customer Support"') == ["room", "Customer Support"]
    assert split_words("room Bob's") == ["room", "Bob's"]


# --- dispatch -----------------------------------------------------------------------------------


def test_a_known_command_with_its_arguments_is_ready_to_run() -> None:
    found = run("Room Alice")
    assert isinstance(found, Invocation)
    assert found.command.name == "room"
    assert found.args.words == ("Alice",)


def test_unknown_command_suggests_close_names() -> None:
    result = run("stauts")
    assert isinstance(result, CommandResult) and not result.ok
    assert "Unknown command `stauts`" in result.text
    assert "`!letta status`" in result.text


def test_admin_command_is_refused_to_a_user_with_their_level() -> None:
    result = run("sync", level="user")
    assert isinstance(result, CommandResult) and not result.ok
    assert "admins only" in result.text and "**user**" in result.text
    assert isinstance(run("sync", level="admin"), Invocation)


def test_no_level_means_no_command_at_all() -> None:
    result = run("help", level=None)
    assert isinstance(result, CommandResult) and "not allowed" in result.text


def test_missing_argument_shows_the_usage() -> None:
    result = run("room")
    assert isinstance(result, CommandResult) and not result.ok
    assert result.text == "Missing argument. Usage: `!letta room <agent>`"
    result = run("invite @x:t")
    assert (
        isinstance(result, CommandResult) and "`!letta invite <mxid> <agent|all>`" in result.text
    )


def test_too_many_arguments_and_unknown_flags_are_refused() -> None:
    result = run("pause Alice Bob")
    assert isinstance(result, CommandResult) and result.text.startswith("Too many arguments")
    result = run("pause Alice --force")
    assert isinstance(result, CommandResult) and "Unknown option `--force`" in result.text


def test_declared_flag_is_parsed_apart_from_words() -> None:
    found = run("reset Alice --yes")
    assert isinstance(found, Invocation)
    assert found.args.words == ("Alice",) and found.args.flags == {"--yes"}


def test_last_optional_argument_takes_the_rest_of_the_line() -> None:
    found = run("agents customer support")
    assert isinstance(found, Invocation) and found.args.words == ("customer support",)


def test_a_command_cannot_be_declared_twice() -> None:
    registry = Registry()

    async def handler(_ctx: object) -> None:  # pragma: no cover - never run
        raise AssertionError

    registry.command("x", help="x")(handler)
    with pytest.raises(ValueError):
        registry.command("x", help="again")(handler)


# --- help ---------------------------------------------------------------------------------------


def test_help_lists_what_the_level_may_run() -> None:
    user = help_text("user", "")
    admin = help_text("admin", "!letta")
    assert "Your level: **user**" in user and "without a prefix" in user
    assert "`agents [filter]`" in user and "sync" not in user
    assert "`!letta reset <agent> [--yes]`" in admin and "*(admin)*" in admin


# --- <agent> arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("agent-33333333-cccc", BOB),  # the id
        ("AGENT-33333333-CCCC", BOB),
        ("33333333-cccc", BOB),  # the id without its agent- prefix
        ("@agent_22222222_bbbb:t", ALBERT),  # the puppet mxid
        ("!a:t", ALICE),  # the room id
        ("bob", BOB),  # an exact name wins over the longer Bobby
        ("bobb", BOBBY),  # a unique prefix
        ("ALI", ALICE),  # case-insensitive
        ("olg", OLGA),  # an active agent wins a prefix over an archived one
        ("olga", OLD),  # ... but an exact name is exact
    ],
)
def test_agent_argument_resolution(query: str, expected: AgentRow) -> None:
    assert resolve_agent(query, AGENTS) is expected


def test_ambiguous_prefix_lists_the_matches_and_changes_nothing() -> None:
    result = resolve_agent("al", AGENTS)
    assert isinstance(result, CommandResult) and not result.ok
    assert "`al` matches 2 agents" in result.text
    assert "**Alice**" in result.text and "**Albert**" in result.text
    assert "Nothing changed" in result.text


def test_unknown_agent_lists_close_matches() -> None:
    result = resolve_agent("Alcie", AGENTS)
    assert isinstance(result, CommandResult) and not result.ok
    assert "No agent matches `Alcie`" in result.text and "**Alice**" in result.text
    result = resolve_agent("agent-00000000", AGENTS)
    assert isinstance(result, CommandResult) and "No agent matches" in result.text


def test_markdown_in_agent_names_stays_literal() -> None:
    star = AgentRow("agent-7", "@agent_7:t", "*star*")
    result = resolve_agent("*sta", [star, AgentRow("agent-9", "@agent_9:t", "*start")])
    assert isinstance(result, CommandResult) and r"\*star\*" in result.text


# --- what sync reports --------------------------------------------------------------------------


def test_sync_reply_names_renamed_new_and_archived_agents() -> None:
    before = [ALICE, BOB, AgentRow("agent-x", "@x:t", "Gone", room_id="!x:t")]
    renamed = AgentRow(BOB.agent_id, BOB.mxid, "Robert", room_id=BOB.room_id)
    gone = AgentRow("agent-x", "@x:t", "Gone", room_id="!x:t", state=DELETED)
    new = AgentRow("agent-n", "@n:t", "Newt", room_id="!n:t")
    after = [ALICE, renamed, gone, new]
    assert diff_rows(before, after) == [
        "New: **Newt**",
        "Renamed: Bob → **Robert**",
        "Archived (deleted in Letta): **Gone**",
    ]
    summary = PassSummary(started_at=0, changes={"update": 1, "create": 1, "archive": 1}, agents=3)
    text = describe_pass(summary, before, after)
    assert text.startswith("**Sync done**: 1 archived, 1 created, 1 updated (3 agents bridged).")


def test_sync_reply_for_no_changes_and_for_a_failure() -> None:
    assert describe_pass(PassSummary(started_at=0, agents=2), [ALICE], [ALICE]) == (
        "**Sync done**: no changes (2 agents bridged)."
    )
    failed = PassSummary(started_at=0, result="error", error="Letta unreachable", failed=2)
    text = describe_pass(failed, [], [])
    assert text == "**Sync failed**: Letta unreachable; 2 agent(s) left for the next pass."
