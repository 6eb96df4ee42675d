"""The generated registration obeys Tuwunel's (ruma's) rules, checked with a real Rust regex
engine (pydantic-core's), and two bridges' namespaces never overlap."""

from __future__ import annotations

import re
from typing import Annotated

import pytest
from pydantic import ConfigDict, StringConstraints, TypeAdapter, ValidationError

from letta_appservice.config import parse_config
from letta_appservice.matrix.ids import agent_alias, agent_mxid
from letta_appservice.matrix.registration import build_registration

AGENT = "agent-6f1c2d3e-4b5a-4c7d-8e9f-0a1b2c3d4e5f"


def registration(template: str = "agent_{agent_id}", bot: str = "letta", rid: str = "letta"):
    return build_registration(
        parse_config(
            {
                "homeserver": {"address": "http://hs:8008", "domain": "test.local"},
                "appservice": {
                    "id": rid,
                    "address": "http://as:29330",
                    "bot_localpart": bot,
                    "as_token": "a" * 32,
                    "hs_token": "b" * 32,
                },
                "letta": {"base_url": "http://letta:8283"},
                "bridge": {"username_template": template, "permissions": {"test.local": "user"}},
            },
            env={},
        )
    )


def rust_regex(pattern: str) -> TypeAdapter[str]:
    """Compile with the Rust `regex` crate (as Tuwunel does); it rejects look-arounds."""
    return TypeAdapter(
        Annotated[str, StringConstraints(pattern=pattern)],
        config=ConfigDict(regex_engine="rust-regex"),
    )


def matches(adapter: TypeAdapter[str], text: str) -> bool:
    try:
        adapter.validate_python(text)
    except ValidationError:
        return False
    return True


def all_regexes(reg: dict) -> list[str]:
    return [
        ns["regex"] for kind in ("users", "aliases", "rooms") for ns in reg["namespaces"][kind]
    ]


def test_required_keys_and_shape() -> None:
    reg = registration()
    for key in ("id", "url", "as_token", "hs_token", "sender_localpart", "namespaces"):
        assert key in reg
    assert reg["url"] == "http://as:29330" and reg["rate_limited"] is False
    assert all(ns["exclusive"] for kind in ("users", "aliases") for ns in reg["namespaces"][kind])


def test_regexes_are_anchored_and_accepted_by_rust_regex() -> None:
    users, bot = (rust_regex(ns["regex"]) for ns in registration()["namespaces"]["users"])
    aliases = rust_regex(registration()["namespaces"]["aliases"][0]["regex"])
    for pattern in all_regexes(registration()):
        assert pattern.startswith("^") and pattern.endswith("$")
    puppet = agent_mxid("agent_{agent_id}", "test.local", AGENT)
    assert matches(users, puppet) and matches(bot, "@letta:test.local")
    assert matches(aliases, agent_alias("agent_{agent_id}", "test.local", AGENT))
    # Anchors and escaping: no look-alikes slip in.
    for impostor in (
        "@alice:test.local",
        puppet + ".evil.com",
        "@x" + puppet[1:],
        puppet.replace("test.local", "testXlocal"),
        "@letta:test.local.evil",
        "@letta2:test.local",
    ):
        assert not matches(users, impostor) and not matches(bot, impostor), impostor


def test_rust_engine_really_rejects_look_arounds() -> None:
    with pytest.raises(Exception, match="look-around"):
        rust_regex(r"^(?!@admin)@agent_.*$")


@pytest.mark.parametrize("template", ["agent_{agent_id}", "{agent_id}.letta", "l=x/{agent_id}-a"])
def test_any_valid_template_gives_a_rust_regex_matching_its_puppets(template: str) -> None:
    reg = registration(template)
    users = rust_regex(reg["namespaces"]["users"][0]["regex"])
    assert matches(users, agent_mxid(template, "test.local", AGENT))
    assert re.fullmatch(reg["namespaces"]["users"][0]["regex"][1:-1], "@x:test.local") is None


def test_two_bridges_namespaces_do_not_overlap() -> None:
    first = registration("agent_{agent_id}", "letta", "letta")
    second = registration("lab_agent_{agent_id}", "lab", "lab")
    ids = {
        "first": [agent_mxid("agent_{agent_id}", "test.local", AGENT), "@letta:test.local"],
        "second": [agent_mxid("lab_agent_{agent_id}", "test.local", AGENT), "@lab:test.local"],
    }
    for reg, own, other in ((first, "first", "second"), (second, "second", "first")):
        adapters = [rust_regex(ns["regex"]) for ns in reg["namespaces"]["users"]]
        assert all(any(matches(a, mxid) for a in adapters) for mxid in ids[own])
        assert not any(matches(a, mxid) for a in adapters for mxid in ids[other])
