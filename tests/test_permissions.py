"""Permission levels resolve most-specific-first."""

from __future__ import annotations

import attrs
import pytest

from letta_appservice.permissions import Permissions, at_least
from tests.harness.routing import ALICE, BOB, DOMAIN
from tests.harness.routing import config as routing_config


def test_most_specific_entry_wins() -> None:
    p = Permissions({"*": "user", "example.org": "admin", "@bob:example.org": "user"})
    assert p.level("@alice:example.org") == "admin"
    assert p.level("@bob:example.org") == "user" and not p.is_admin("@bob:example.org")
    assert p.level("@eve:elsewhere.net") == "user"
    assert p.admins == []


def test_unlisted_users_have_no_access() -> None:
    p = Permissions({"example.org": "user", "@root:example.org": "admin"})
    assert p.level("@mallory:evil.org") is None and not p.is_user("@mallory:evil.org")
    assert p.is_user("@alice:example.org") and not p.is_admin("@alice:example.org")
    assert p.is_admin("@root:example.org") and p.admins == ["@root:example.org"]
    # A server name is matched exactly, not as a suffix.
    assert p.level("@x:sub.example.org") is None and p.level("@x:example.org.evil") is None


def test_grants_to_everyone_are_named_in_warnings() -> None:
    assert Permissions({"example.org": "admin"}).warnings() == []
    [user] = Permissions({"*": "user"}).warnings()
    assert user == (
        'bridge.permissions gives "*" user: every Matrix user, on any server, may talk to the '
        "agents"
    )
    [admin] = Permissions({"*": "admin"}).warnings()
    assert admin.startswith('bridge.permissions gives "*" admin: every Matrix user, on any')
    assert admin.endswith("is invited to every agent room")


def test_levels_rank_admin_over_user_over_nothing() -> None:
    assert at_least("admin", "user") and at_least("user", "user") and at_least("admin", "admin")
    assert not at_least("user", "admin") and not at_least(None, "user")


def test_who_may_bring_agents_into_rooms_of_other_servers() -> None:
    table = {"example.org": "user", "@root:example.org": "admin", "@far:remote.net": "user"}
    admins_only = Permissions(table, domain="example.org")
    assert admins_only.may_bring_into("@alice:example.org", "example.org")
    assert admins_only.may_bring_into("@alice:example.org", None)  # unknown: taken as ours
    assert not admins_only.may_bring_into("@alice:example.org", "remote.net")
    assert admins_only.may_bring_into("@root:example.org", "remote.net")
    assert not admins_only.may_bring_into("@eve:evil.org", "example.org")  # no access at all
    users = Permissions(table, domain="example.org", remote_rooms="users")
    assert users.may_bring_into("@alice:example.org", "remote.net")
    assert not users.may_bring_into("@eve:evil.org", "remote.net")
    # Without a domain every room is ours.
    assert Permissions(table).may_bring_into("@alice:example.org", "remote.net")


def test_the_config_gives_the_table_the_domain_and_the_remote_rooms_rule(
    caplog: pytest.LogCaptureFixture,
) -> None:
    config = routing_config()
    permissions = Permissions.from_config(config)
    assert permissions.domain == DOMAIN and permissions.remote_rooms == "admins"
    assert permissions.level(ALICE) == "admin" and permissions.level(BOB) == "user"
    assert not permissions.may_bring_into(BOB, "elsewhere.net")
    assert caplog.records == []  # no grant to everyone: nothing to warn about


def test_the_server_part_is_everything_after_the_first_colon() -> None:
    p = Permissions({"hs.test:8448": "user", "hs.test": "admin", "localhost": "user"})
    assert p.level("@a:hs.test:8448") == "user" and p.level("@a:hs.test") == "admin"
    # No server at all matches no server entry (not even one named like a placeholder).
    assert Permissions({"XXXX": "user"}).level("nocolon") is None
    assert Permissions({"*": "user"}).level("nocolon") == "user"


def test_the_configs_remote_rooms_rule_is_used() -> None:
    raw = routing_config()
    config = attrs.evolve(raw, guards=attrs.evolve(raw.guards, remote_rooms="users"))
    assert Permissions.from_config(config).may_bring_into(BOB, "elsewhere.net")
