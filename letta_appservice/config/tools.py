"""The agents' Matrix tools (the ``tools`` section)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .checks import _http_url, _positive, _token, _tool_agents


@attrs.frozen
class ToolsConfig:
    """Which agents get the Matrix tools, how Letta's sandbox reaches us, and their limits."""

    agents: str = "all"  # all | none | tag:<letta tag>
    url: str = ""  # how Letta's sandbox reaches the tool API ("" = appservice.address)
    talk_wait: float = 60.0
    max_hops: int = 3
    calls_per_minute: int = 30
    send_token: str = attrs.field(default="", repr=False)


def tools_config(get: Callable[..., Any]) -> ToolsConfig:
    """The section, read with the validator's ``get(key, kind, check)``."""
    return ToolsConfig(
        agents=get("tools.agents", str, _tool_agents),
        url=get("tools.url", str, lambda v: v and _http_url(v)).rstrip("/"),
        talk_wait=get("tools.talk_wait", float, _positive),
        max_hops=get("tools.max_hops", int, _positive),
        calls_per_minute=get("tools.calls_per_minute", int, _positive),
        send_token=get("tools.send_token", str, lambda v: v and _token(v)),
    )
