"""Who the bridge is on Matrix, built once from the config: the bot's mxid, the puppets'
namespace and the question every flow asks, "is this sender the bridge itself?"."""

from __future__ import annotations

import re

import attrs

from .config import Config
from .matrix.ids import namespace_regex


@attrs.frozen
class Identity:
    bot_mxid: str
    domain: str
    username_template: str
    _puppet_re: re.Pattern[str] = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        pattern = re.compile(namespace_regex(self.username_template, self.domain), re.I)
        object.__setattr__(self, "_puppet_re", pattern)

    @classmethod
    def from_config(cls, config: Config) -> Identity:
        return cls(config.bot_mxid, config.homeserver.domain, config.bridge.username_template)

    def is_puppet(self, mxid: str) -> bool:
        return bool(self._puppet_re.match(mxid))

    def is_bridge(self, mxid: str) -> bool:
        """The bot or one of our puppets: their events are never answered (no loops)."""
        return mxid == self.bot_mxid or self.is_puppet(mxid)
