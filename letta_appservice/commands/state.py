"""Bridge state commands read: the space id and the last reconcile (keys the reconciler writes)."""

from __future__ import annotations

from typing import Any

from ..reconcile.scheduler import LAST_RESULT_KEY
from ..reconcile.space import SPACE_KEY
from .context import Services


async def space_id(services: Services) -> str | None:
    value = await services.state.get(SPACE_KEY)
    return value if isinstance(value, str) else None


async def last_reconcile(services: Services) -> dict[str, Any] | None:
    value = await services.state.get(LAST_RESULT_KEY)
    return value if isinstance(value, dict) else None
