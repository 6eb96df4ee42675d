"""The appservice registration: the YAML Synapse and Tuwunel load, and Tuwunel's TOML form."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import tomli_w
from ruamel.yaml import YAML

from ..config import Config
from ..config.files import write_private
from .ids import exact_regex, namespace_regex


def build_registration(config: Config) -> dict[str, Any]:
    """Registration for ``config``: exclusive, anchored namespaces for the puppets, their room
    aliases and the bot. The same dict works for Synapse and Tuwunel unchanged."""
    hs, a, b = config.homeserver, config.appservice, config.bridge
    return {
        "id": a.id,
        "url": a.address,
        "as_token": a.as_token,
        "hs_token": a.hs_token,
        "sender_localpart": a.bot_localpart,
        "rate_limited": False,
        "namespaces": {
            "users": [
                {"exclusive": True, "regex": namespace_regex(b.username_template, hs.domain)},
                {"exclusive": True, "regex": exact_regex("@", a.bot_localpart, hs.domain)},
            ],
            "aliases": [
                {"exclusive": True, "regex": namespace_regex(b.username_template, hs.domain, "#")}
            ],
            "rooms": [],
        },
        "receive_ephemeral": False,
    }


def write_registration(registration: dict[str, Any], path: Path) -> None:
    """Write the registration owner-only (it holds both tokens)."""
    yaml = YAML()
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(registration, out)
    write_private(path, out.getvalue())


def tuwunel_toml(registration: dict[str, Any]) -> str:
    """The equivalent ``[global.appservice.<id>]`` block for tuwunel.toml (flat namespace
    arrays, not under a ``namespaces`` key), written by a TOML writer so every string is
    escaped the way TOML wants."""
    block = {k: v for k, v in registration.items() if k not in ("id", "namespaces")}
    block.update(registration["namespaces"])
    return tomli_w.dumps({"global": {"appservice": {registration["id"]: block}}})
