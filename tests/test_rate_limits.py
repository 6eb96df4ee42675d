"""The homeserver's 429 M_LIMIT_EXCEEDED while an answer is posted, through the session the
bridge uses (RateLimitMiddleware) and mautrix's AppServiceAPI, against a homeserver stand-in
that rate-limits on demand."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from aiohttp import web
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixRequestError
from mautrix.types import UserID

from letta_appservice.chat.parts import Part
from letta_appservice.chat.poster import Job, Poster, homeserver_trouble
from letta_appservice.matrix.rooms import RateLimitMiddleware
from tests.harness.routing import BOB, ROOM, MemoryASStateStore, agent


@attrs.define
class LimitingHomeserver:
    """Answers message sends; the next ``limited`` of them get 429 with ``body``/``headers``."""

    url: str = ""
    limited: int = 0
    body: dict[str, Any] = attrs.field(factory=dict)
    headers: dict[str, str] = attrs.field(factory=dict)
    sends: list[tuple[str, float]] = attrs.field(factory=list)  # txn id, when

    async def send(self, request: web.Request) -> web.Response:
        self.sends.append((request.match_info["txn"], time.monotonic()))
        if self.limited > 0:
            self.limited -= 1
            return web.json_response(self.body, status=429, headers=self.headers)
        return web.json_response({"event_id": f"$e{len(self.sends)}"})


class Recorded:
    async def add(self, *_args: Any) -> None:
        return None


@attrs.define
class Homeserver:
    server: LimitingHomeserver
    api: AppServiceAPI
    middleware: RateLimitMiddleware

    def poster(self) -> Poster:
        job = Job("$q", ROOM, BOB, agent(1), "", "bob", {}, 0)
        return Poster(self.api, Recorded(), job, {})  # type: ignore[arg-type]


@pytest_asyncio.fixture
async def homeserver() -> AsyncIterator[Homeserver]:
    server = LimitingHomeserver()
    app = web.Application()
    app.router.add_put("/_matrix/client/v3/rooms/{room}/send/{type}/{txn}", server.send)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    server.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    middleware = RateLimitMiddleware(max_wait=60.0)
    async with aiohttp.ClientSession(middlewares=(middleware,)) as session:
        api = AppServiceAPI(
            base_url=server.url, bot_mxid=UserID("@letta:bridge.test"), token="as",
            state_store=MemoryASStateStore(), client_session=session,
            log=logging.getLogger("tests.rate_limits"),
        )  # fmt: skip
        yield Homeserver(server, api, middleware)
    await runner.cleanup()


async def test_429_with_retry_after_ms_is_waited_out_and_the_part_posted_once(
    homeserver: Homeserver,
) -> None:
    hs = homeserver.server
    poster = homeserver.poster()
    await poster.post(0, Part("m.text", "first part"))
    hs.limited, hs.body = 2, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 200}
    await poster.post(1, Part("m.text", "second part"))
    txns = [txn for txn, _ in hs.sends]
    assert txns[0] != txns[1] and txns[1:] == [txns[1]] * 3  # the same txn id, sent again
    assert homeserver.middleware.waited == 2
    # Waited as asked (a lower bound holds on any machine, however loaded).
    times = [at for _, at in hs.sends]
    assert times[2] - times[1] >= 0.2 and times[3] - times[2] >= 0.2
    assert set(poster.sent) == {0, 1}


async def test_429_without_a_body_follows_retry_after(homeserver: Homeserver) -> None:
    hs = homeserver.server
    hs.limited, hs.headers = 1, {"Retry-After": "0.3"}
    await homeserver.poster().post(0, Part("m.text", "answer"))
    assert len(hs.sends) == 2 and hs.sends[1][1] - hs.sends[0][1] >= 0.3


async def test_a_wait_too_long_goes_back_to_the_event_which_is_retried_later(
    homeserver: Homeserver,
) -> None:
    hs = homeserver.server
    hs.limited, hs.body = 1, {"errcode": "M_LIMIT_EXCEEDED", "retry_after_ms": 120_000}
    with pytest.raises(MatrixRequestError) as caught:
        await homeserver.poster().post(0, Part("m.text", "answer"))
    assert caught.value.http_status == 429 and homeserver_trouble(caught.value)
    assert len(hs.sends) == 1 and homeserver.middleware.waited == 0
