"""What of the config a turn needs (bridge, letta and guards settings in one place)."""

from __future__ import annotations

import attrs

from ..config import Config
from .cards import ASKER


@attrs.frozen
class TurnSettings:
    """The parts of the config a turn needs."""

    streaming: bool = False
    show_reasoning: str = "off"
    show_tools: str = "off"
    timeout: float = 180.0
    retry_window: float = 600.0
    delay_notice: float = 30.0
    max_concurrency: int = 8  # Letta turns at once, across agents
    deadline: float = 900.0  # seconds a whole turn may take (pings do not extend it)
    approvers: str = ASKER  # who may decide an approval card (bridge.approvers)
    thinking: bool = False  # a "thinking…" placeholder the answer replaces

    @classmethod
    def from_config(cls, config: Config) -> TurnSettings:
        letta, bridge = config.letta, config.bridge
        return cls(
            streaming=letta.streaming,
            show_reasoning=bridge.show_reasoning,
            show_tools=bridge.show_tools,
            timeout=letta.timeout,
            retry_window=letta.retry_window,
            delay_notice=letta.delay_notice,
            max_concurrency=letta.max_concurrency,
            deadline=config.guards.turn_deadline,
            approvers=bridge.approvers,
            thinking=bridge.thinking_placeholder,
        )
