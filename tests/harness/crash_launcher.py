"""Run the appservice until it has created its first agent room, then die on the spot
(``os._exit(9)``): a crash between "room created on the homeserver" and "mapping saved".

    python -m tests.harness.crash_launcher <config.json>
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from mautrix.appservice import AppServiceAPI

from letta_appservice.app import App
from letta_appservice.config import parse_config
from letta_appservice.matrix import rooms

CRASH_EXIT = 9


def main(path: str) -> None:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr)
    config = parse_config(json.loads(Path(path).read_text()), env={})
    create_room = rooms.create_room

    async def create_then_die(api: AppServiceAPI, body: dict[str, Any]) -> Any:
        room_id = await create_room(api, body)
        if (body.get("creation_content") or {}).get("type") != "m.space":
            print(f"created {room_id}; exiting before the mapping is saved", file=sys.stderr)
            os._exit(CRASH_EXIT)
        return room_id

    rooms.create_room = create_then_die  # type: ignore[assignment]

    async def serve() -> None:
        app = App(config)
        await app.start()
        await asyncio.Event().wait()  # the first pass ends this process

    asyncio.run(serve())


if __name__ == "__main__":
    main(sys.argv[1])
