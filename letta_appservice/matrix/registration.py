"""The appservice registration: the YAML Synapse and Tuwunel load, and Tuwunel's TOML form."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from ..config import Config
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
    yaml = YAML()
    yaml.default_flow_style = False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        yaml.dump(registration, f)
    tmp.chmod(0o600)  # it holds both tokens
    tmp.replace(path)


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string for the characters we produce.
    return json.dumps(value)


def tuwunel_toml(registration: dict[str, Any]) -> str:
    """The equivalent ``[global.appservice.<id>]`` block for tuwunel.toml (flat namespace
    arrays, not under a ``namespaces`` key)."""
    rid = registration["id"]
    lines = [
        f"[global.appservice.{rid}]",
        f"url = {_toml_str(registration['url'])}",
        f"as_token = {_toml_str(registration['as_token'])}",
        f"hs_token = {_toml_str(registration['hs_token'])}",
        f"sender_localpart = {_toml_str(registration['sender_localpart'])}",
        f"rate_limited = {str(registration['rate_limited']).lower()}",
        f"receive_ephemeral = {str(registration['receive_ephemeral']).lower()}",
    ]
    for kind in ("users", "aliases", "rooms"):
        for ns in registration["namespaces"][kind]:
            lines += [
                "",
                f"[[global.appservice.{rid}.{kind}]]",
                f"exclusive = {str(ns['exclusive']).lower()}",
                # Literal string: backslashes in the regex stay as they are.
                f"regex = '{ns['regex']}'",
            ]
    return "\n".join(lines) + "\n"
