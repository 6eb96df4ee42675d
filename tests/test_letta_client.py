"""LettaClient against the fake Letta server over real HTTP."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from letta_appservice.letta import LettaClient, LettaError, LettaMessage
from tests.harness import letta_replies as r
from tests.harness.fake_letta import FakeLetta

StartFake = Callable[..., Awaitable[FakeLetta]]
MakeClient = Callable[..., LettaClient]
AGENTS = "/v1/agents/"


@pytest_asyncio.fixture
async def start_fake() -> AsyncIterator[StartFake]:
    fakes: list[FakeLetta] = []

    async def start(**options: Any) -> FakeLetta:
        fake = FakeLetta(**options)
        await fake.start()
        fakes.append(fake)
        return fake

    yield start
    for fake in fakes:
        await fake.stop()


@pytest_asyncio.fixture
async def client() -> AsyncIterator[MakeClient]:
    clients: list[LettaClient] = []

    def make(fake: FakeLetta | str, api_key: str = "", **options: Any) -> LettaClient:
        options.setdefault("backoff", 0.01)
        url = fake.url if isinstance(fake, FakeLetta) else fake
        made = LettaClient(url, api_key, **options)
        clients.append(made)
        return made

    yield make
    for made in clients:
        await made.close()


def posts(fake: FakeLetta) -> list[Any]:
    """Message requests (the client also asks the server's version before the first)."""
    return [r for r in fake.requests if "/messages" in r.path]


async def _collect(stream: Any) -> list[tuple[str, str]]:
    async with stream:
        return [(m.kind, m.text) async for m in stream]


# -- health, auth, headers -------------------------------------------------------------------


async def test_health_needs_no_key_and_reports_version(start_fake: StartFake, client: MakeClient):
    fake = await start_fake(api_key="s3cret", version="0.6.5")
    assert await client(fake).health() == "0.6.5"


async def test_wrong_key_is_an_auth_error_naming_the_url_not_the_key(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake(api_key="s3cret")
    with pytest.raises(LettaError) as caught:
        await client(fake, "wrong-key-123").list_agents()
    error = caught.value
    assert (error.kind, error.status, error.retryable) == ("auth", 401, False)
    assert fake.url in str(error) and "wrong-key-123" not in str(error)
    assert len(fake.requests_to(AGENTS)) == 1  # not retried
    fake.add_agent("ok")
    assert [a.name for a in await client(fake, "s3cret").list_agents()] == ["ok"]


async def test_requests_select_the_modern_api(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    fake.add_agent("a")
    await client(fake).list_agents()
    sent = fake.requests_to(AGENTS)[0]
    assert sent.headers["User-Agent"].startswith("letta-appservice/")
    assert not sent.has_auth and not sent.legacy_client
    # Our User-Agent alone, like aiohttp's default one, would make the server expand blocks
    # and tools (3x larger agent lists); the SDK-version header is what selects the modern API.
    ours = {k: sent.headers[k] for k in ("User-Agent", "X-Stainless-Package-Version")}
    async with aiohttp.ClientSession() as session:
        for headers, expanded in (
            ({}, True),
            ({"User-Agent": ours["User-Agent"]}, True),
            (ours, False),
        ):
            async with session.get(fake.url + AGENTS, headers=headers) as resp:
                (agent,) = await resp.json()
            assert bool(agent["blocks"]) is bool(agent["tools"]) is expanded


# -- agents ----------------------------------------------------------------------------------


async def test_pagination_over_120_agents(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    created = [fake.add_agent(f"agent {i}") for i in range(120)]
    agents = await client(fake, page_size=50).list_agents()
    assert [a.id for a in agents] == [a.id for a in reversed(created)]  # newest first
    pages = fake.requests_to(AGENTS)
    assert [p.query.get("limit") for p in pages] == ["50"] * 4
    assert [p.query.get("after") for p in pages] == [
        None,
        agents[49].id,
        agents[99].id,
        agents[119].id,
    ]


async def test_server_without_pagination(start_fake: StartFake, client: MakeClient, caplog):
    fake = await start_fake(paginate=False)  # 0.6.0: limit/after ignored, everything each time
    for i in range(70):
        fake.add_agent(f"agent {i}")
    with caplog.at_level(logging.WARNING, "letta_appservice.letta"):
        agents = await client(fake, page_size=50).list_agents()
    assert len({a.id for a in agents}) == len(agents) == 70
    assert len(fake.requests_to(AGENTS)) == 2
    assert "does not page" in caplog.text


async def test_server_ignoring_the_cursor_cannot_loop_forever(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake(honour_after=False)  # honours limit, returns page 1 again and again
    for i in range(30):
        fake.add_agent(f"agent {i}")
    agents = await client(fake, page_size=10).list_agents()
    assert len({a.id for a in agents}) == len(agents) == 10
    assert len(fake.requests_to(AGENTS)) == 2


async def test_filters(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    both = fake.add_agent("both", tags=["matrix", "prod"])
    matrix = fake.add_agent("matrix only", tags=["matrix"])
    fake.add_agent("prod only", tags=["prod"], description="d")
    letta = client(fake)
    assert {a.id for a in await letta.list_agents(tags=["matrix"])} == {both.id, matrix.id}
    assert [
        a.id for a in await letta.list_agents(tags=["matrix", "prod"], match_all_tags=True)
    ] == [both.id]
    assert [a.tags for a in await letta.list_agents(name="both")] == [("matrix", "prod")]
    assert fake.requests_to(AGENTS)[-1].query.getall("name") == ["both"]


async def test_get_agent_and_unknown_agent(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("Helper", description="helps", tags=["t"])
    letta = client(fake)
    got = await letta.get_agent(agent.id)
    assert (got.id, got.name, got.description, got.tags) == (agent.id, "Helper", "helps", ("t",))
    with pytest.raises(LettaError) as caught:
        await letta.get_agent("agent-missing")
    assert (caught.value.kind, caught.value.retryable) == ("not_found", False)
    assert len(fake.requests_to(f"{AGENTS}agent-missing")) == 1


async def test_gets_are_retried_on_server_errors(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    fake.add_agent("a")
    fake.fail_next(2, status=503, path_contains=AGENTS)
    assert len(await client(fake, retries=3).list_agents()) == 1
    assert len(fake.requests_to(AGENTS)) == 4  # 2 failures, page 1, empty page 2


async def test_retries_give_up(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    fake.fail_next(10, status=500, path_contains="/health")
    with pytest.raises(LettaError) as caught:
        await client(fake, retries=2).health()
    assert (caught.value.kind, caught.value.status, caught.value.retryable) == (
        "server",
        500,
        True,
    )
    assert len(fake.requests_to("/v1/health/")) == 3


async def test_unreachable_server_is_a_connection_error(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    url = fake.url
    await fake.stop()
    with pytest.raises(LettaError) as caught:
        await client(url, retries=1).health()
    assert (caught.value.kind, caught.value.retryable) == ("connection", True)


# -- messages --------------------------------------------------------------------------------


async def test_send_message(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("echo")
    letta = client(fake)
    response = await letta.send_message(agent.id, "hi there", name="alice", otid="otid-1")
    assert [m.kind for m in response.messages] == ["reasoning", "assistant"]
    assert response.assistant_texts == ["Echo: hi there"]
    assert response.stop_reason == "end_turn"
    await letta.send_message(agent.id, "second", name="Alice Smith")  # a name OpenAI rejects
    sent = [req.json["messages"][0] for req in fake.requests_to(f"{AGENTS}{agent.id}/messages")]
    assert sent == [
        {"role": "user", "content": "hi there", "name": "alice", "otid": "otid-1"},
        {"role": "user", "content": "second"},
    ]
    log = await fake.wait_for_messages(2)
    assert [(m.text, m.otid, m.name) for m in log] == [
        ("hi there", "otid-1", "alice"),
        ("second", None, None),
    ]


async def test_servers_before_0_6_15_get_the_text_field(start_fake: StartFake, client: MakeClient):
    fake = await start_fake(version="0.6.14", inline_streaming="ignored")
    agent = fake.add_agent("old")
    letta = client(fake)
    response = await letta.send_message(agent.id, "plain", otid="o-1")
    assert response.assistant_texts == ["Echo: plain"]
    streamed = await _collect(letta.stream_message(agent.id, "streamed"))
    assert ("assistant", "Echo: streamed") in streamed
    sent = [r.json["messages"][0] for r in posts(fake)]
    assert [m.get("text") for m in sent] == ["plain", "streamed"]
    assert all("content" not in m for m in sent)
    assert len(fake.requests_to("/v1/health/")) == 1  # the version is asked once
    assert [m.text for m in fake.message_log] == ["plain", "streamed"]


async def test_a_server_upgraded_across_0_6_15_while_we_run_loses_no_message(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake(version="0.6.14", inline_streaming="ignored")
    agent = fake.add_agent("upgraded")
    letta = client(fake)
    await letta.send_message(agent.id, "before")
    fake.version, fake.inline_streaming = "0.16.8", "v1"  # upgraded behind our back
    response = await letta.send_message(agent.id, "after")
    assert response.assistant_texts == ["Echo: after"]
    await _collect(letta.stream_message(agent.id, "streamed"))
    sent = [r.json["messages"][0] for r in posts(fake)]
    assert [("text" in m, "content" in m) for m in sent] == [
        (True, False),  # before
        (True, False),  # after, refused with 422
        (False, True),  # after, again
        (False, True),  # streamed
    ]
    assert [m.text for m in fake.message_log] == ["before", "after", "streamed"]


async def test_version_unknown_for_now_means_content_and_asking_again(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake(version="0.16.8")
    agent = fake.add_agent("new")
    letta = client(fake)
    fake.fail_next(1, status=503, path_contains="/v1/health")
    await letta.send_message(agent.id, "first")
    await letta.send_message(agent.id, "second")
    await letta.send_message(agent.id, "third")
    assert len(fake.requests_to("/v1/health/")) == 2  # failed, then learnt for good
    sent = [r.json["messages"][0] for r in fake.requests_to(f"{AGENTS}{agent.id}/messages")]
    assert [m["content"] for m in sent] == ["first", "second", "third"]


async def test_send_message_reply_shapes(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("memgpt", stop_reason="max_steps")
    agent.responder = lambda _agent, _text: [
        r.internal_monologue("old thought"),
        r.tool_call("web_search", {"q": "x"}),
        r.tool_return("found it"),
        r.send_message_call("from the tool"),
        r.assistant_parts("list ", "content"),
        r.legacy_assistant("old field"),
    ]
    response = await client(fake).send_message(agent.id, "go")
    assert [(m.kind, m.text) for m in response.messages] == [
        ("reasoning", "old thought"),
        ("tool_call", ""),
        ("tool_return", "found it"),
        ("assistant", "from the tool"),
        ("assistant", "list content"),
        ("assistant", "old field"),
    ]
    assert response.messages[1].tool_name == "web_search"
    assert response.stop_reason == "max_steps"


@pytest.mark.parametrize("version", ["0.6.5", "0.6.14", "0.8.4", "0.16.8"])
async def test_every_versions_reply_shapes_are_understood(
    start_fake: StartFake, client: MakeClient, version: str
):
    fake = await start_fake(version=version)
    agent = fake.add_agent("thinker")
    agent.responder = lambda _agent, _text: [
        r.reasoning("a thought"),
        r.tool_call("web_search", {"q": "x"}),
        r.tool_return("found it"),
        r.assistant_parts("list ", "content"),
    ]
    letta = client(fake)
    response = await letta.send_message(agent.id, "go")
    # The fake speaks the version's own shapes (shared/letta-api.md).
    kinds = [m["message_type"] for m in r.for_version(agent.responder(agent, ""), version)]
    old = r.release(version) < (0, 6, 6)
    assert kinds[0] == ("internal_monologue" if old else "reasoning_message")
    assert [(m.kind, m.text) for m in response.messages] == [
        ("reasoning", "a thought"),
        ("tool_call", ""),
        ("tool_return", "found it"),
        ("assistant", "list content"),
    ]
    assert response.messages[1].tool_name == "web_search"
    assert response.stop_reason == (None if r.release(version) < (0, 8, 5) else "end_turn")
    streamed = await _collect(letta.stream_message(agent.id, "go"))
    assert streamed[-1] == ("assistant", "list content")


async def test_a_pending_approval_is_answered_as_0_16_8_does(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake()
    agent = fake.add_agent("careful")
    agent.responder = lambda _agent, _text: [r.approval_request("rm", {"path": "/"})]
    letta = client(fake)
    first = await letta.send_message(agent.id, "clean up")
    assert first.stop_reason == "requires_approval"
    with pytest.raises(LettaError) as caught:
        await letta.send_message(agent.id, "and now?")
    assert (caught.value.kind, caught.value.status, caught.value.retryable) == ("busy", 409, True)
    assert "PENDING_APPROVAL" in str(caught.value)
    [refusal] = [q for q in fake.requests if q.path.endswith("/messages")][1:]
    assert refusal.json["messages"][0]["content"] == "and now?"


async def test_message_posts_are_not_retried(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("a")
    fake.fail_next(1, status=500, path_contains="/messages")
    with pytest.raises(LettaError) as caught:
        await client(fake, retries=3).send_message(agent.id, "once", otid="o-1")
    assert caught.value.kind == "server"
    assert len(fake.requests_to(f"{AGENTS}{agent.id}/messages")) == 1
    assert fake.message_log == []


async def test_busy_agent_and_cancel(start_fake: StartFake, client: MakeClient):
    fake = await start_fake(reject_concurrent=True)
    agent = fake.add_agent("slow", delay=30)
    letta = client(fake)
    first = asyncio.create_task(letta.send_message(agent.id, "first"))
    await fake.wait_for_in_flight(agent.id)
    with pytest.raises(LettaError) as caught:
        await letta.send_message(agent.id, "second")
    assert (caught.value.kind, caught.value.status, caught.value.retryable) == ("busy", 409, True)
    await letta.cancel(agent.id)
    response = await asyncio.wait_for(first, 10)
    assert (response.messages, response.stop_reason) == ((), "cancelled")
    # The refused request was in flight beside the first (the fake counts before refusing).
    assert fake.max_in_flight[agent.id] == 2
    assert [m.text for m in fake.message_log] == ["first"]


async def test_cancel_with_nothing_running_is_answered_at_once(
    start_fake: StartFake, client: MakeClient
):
    """Letta 0.16.8 answers 409 "No active runs to cancel": not an error, not retried."""
    fake = await start_fake()
    agent = fake.add_agent("idle")
    await client(fake, retries=3).cancel(agent.id)
    assert len(fake.requests_to(f"{AGENTS}{agent.id}/messages/cancel")) == 1


async def test_timeout(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("slow", delay=30)
    with pytest.raises(LettaError) as caught:
        await client(fake, timeout=0.3).send_message(agent.id, "hello?")
    assert (caught.value.kind, caught.value.retryable) == ("timeout", True)


# -- streaming -------------------------------------------------------------------------------


async def test_stream_with_pings(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    fake.pings = 3
    agent = fake.add_agent("echo")
    letta = client(fake)
    stream = letta.stream_message(agent.id, "streamed", name="bob", otid="o-9")
    assert await _collect(stream) == [
        ("reasoning", "The user said 'streamed'; echo it."),
        ("assistant", "Echo: streamed"),
    ]
    assert stream.stop_reason == "end_turn" and stream.usage is not None
    (sent,) = posts(fake)
    assert sent.path == f"{AGENTS}{agent.id}/messages"
    assert sent.json["streaming"] is True and sent.json["include_pings"] is True
    assert sent.json["messages"] == [
        {"role": "user", "content": "streamed", "name": "bob", "otid": "o-9"}
    ]


async def test_stream_of_an_old_server_with_extra_done_markers(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake(version="0.8.4")  # before 0.8.5: no stop_reason event
    fake.done_markers = ("[DONE_GEN]", "[DONE_STEP]", "[DONE]")
    agent = fake.add_agent("old")
    stream = client(fake).stream_message(agent.id, "x")
    assert [kind for kind, _ in await _collect(stream)] == ["reasoning", "assistant"]
    assert stream.stop_reason is None


async def test_stream_error_event(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("broken", stream_error="LLM API unavailable")
    observed: list[tuple[str, float | None, str | None]] = []
    letta = client(fake, on_request=lambda *call: observed.append(call))
    seen: list[LettaMessage] = []
    with pytest.raises(LettaError) as caught:
        async with letta.stream_message(agent.id, "x") as stream:
            async for message in stream:
                seen.append(message)
    assert caught.value.kind == "server" and "LLM API unavailable" in str(caught.value)
    assert [m.kind for m in seen] == ["reasoning", "assistant"]
    # The stream started fine (timed), then failed (counted as an error, without a time).
    (_, started, none), failed = [c for c in observed if c[0] == "message"]
    assert started is not None and none is None
    assert failed == ("message", None, "server")


async def test_stream_tokens_are_deltas_of_one_message(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("echo")
    stream = client(fake).stream_message(agent.id, "tokens please", stream_tokens=True)
    pieces = await _collect(stream)
    assert len(pieces) > 2
    assert "".join(text for kind, text in pieces if kind == "assistant") == "Echo: tokens please"


async def test_legacy_only_server_streams_through_the_stream_route(
    start_fake: StartFake, client: MakeClient
):
    fake = await start_fake(inline_streaming="never")
    agent = fake.add_agent("echo")
    letta = client(fake)
    for text in ("one", "two"):
        assert (await _collect(letta.stream_message(agent.id, text)))[-1] == (
            "assistant",
            f"Echo: {text}",
        )
    # The 422 is met once; the client remembers the route.
    assert [(req.path.rsplit("/", 1)[-1], req.json.get("streaming")) for req in posts(fake)] == [
        ("messages", True),
        ("stream", None),
        ("stream", None),
    ]


async def test_server_ignoring_the_streaming_flag(start_fake: StartFake, client: MakeClient):
    fake = await start_fake(inline_streaming="ignored")  # before 0.14: a whole JSON turn
    agent = fake.add_agent("echo")
    letta = client(fake)
    stream = letta.stream_message(agent.id, "one")
    assert (await _collect(stream))[-1] == ("assistant", "Echo: one")
    assert stream.stop_reason == "end_turn"
    await _collect(letta.stream_message(agent.id, "two"))
    assert fake.requests[-1].path.endswith("/messages/stream")


async def test_silent_stream_times_out(start_fake: StartFake, client: MakeClient):
    fake = await start_fake()
    agent = fake.add_agent("slow", delay=30)  # headers are sent at once, then nothing
    with pytest.raises(LettaError) as caught:
        await _collect(client(fake, timeout=0.3).stream_message(agent.id, "x"))
    assert caught.value.kind == "timeout"


async def test_stream_to_a_busy_agent(start_fake: StartFake, client: MakeClient):
    fake = await start_fake(reject_concurrent=True)
    agent = fake.add_agent("slow", delay=30)
    letta = client(fake)
    first = asyncio.create_task(_collect(letta.stream_message(agent.id, "first")))
    await fake.wait_for_in_flight(agent.id)
    with pytest.raises(LettaError) as caught:
        await _collect(letta.stream_message(agent.id, "second"))
    assert caught.value.kind == "busy"
    await letta.cancel(agent.id)
    assert await asyncio.wait_for(first, 10) == []


async def test_close_leaves_a_given_session_open(start_fake: StartFake):
    fake = await start_fake()
    async with aiohttp.ClientSession() as session:
        letta = LettaClient(fake.url, session=session)
        assert await letta.health() == "0.16.8"
        await letta.close()
        assert not session.closed
