"""Permission levels resolve most-specific-first."""

from __future__ import annotations

from letta_appservice.permissions import Permissions


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
