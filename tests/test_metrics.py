"""/metrics after real work: a reconcile, a conversation and a failed Letta call."""

from __future__ import annotations

import re
from typing import Any

import aiohttp

from tests.harness.apps import Apps
from tests.harness.matrix_user import MatrixUser


def sample(text: str, name: str, **labels: str) -> float:
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    pattern = rf"^{re.escape(name)}{re.escape('{' + want + '}') if want else ''} (\S+)$"
    match = re.search(pattern, text, re.M)
    assert match, f"{name} {labels} missing"
    return float(match.group(1))


async def test_metrics_reflect_reconciles_conversations_and_errors(
    apps: Apps, fake_letta: Any, admin_user: MatrixUser
) -> None:
    app = await apps.start()
    agent = fake_letta.add_agent("Metered")
    fake_letta.fail_next(1, status=500, path_contains="/v1/agents")
    failed = await app.scheduler.run_now()  # the client retries the 500 and succeeds
    assert failed.result == "ok"
    row = await app.agents.get(agent.id)
    assert row is not None and row.room_id
    await admin_user.join(row.room_id)
    await admin_user.send_text(row.room_id, "count me")
    await admin_user.wait_for_event(
        row.room_id, lambda e: e["sender"] == row.mxid and e["type"] == "m.room.message"
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{app.config.appservice.address}/metrics") as resp:
            assert resp.status == 200
            text = await resp.text()
    assert sample(text, "letta_appservice_reconcile_changes_total", kind="create") == 1
    assert sample(text, "letta_appservice_reconcile_seconds_count") >= 1
    assert sample(text, "letta_appservice_agents", state="active") == 1
    assert sample(text, "letta_appservice_letta_errors_total", kind="server") == 1
    list_count = "letta_appservice_letta_request_seconds_count"
    assert sample(text, list_count, operation="list_agents") >= 2  # the 500 and the retry
    assert sample(text, list_count, operation="message") == 1
    assert sample(text, "letta_appservice_transactions_total", result="stored") >= 1
    assert sample(text, "letta_appservice_inbox_events", state="done") >= 1
    assert sample(text, "letta_appservice_matrix_requests_total", method="POST") > 0


async def test_an_error_in_the_middle_of_a_stream_is_counted(
    apps: Apps, fake_letta: Any, admin_user: MatrixUser
) -> None:
    app = await apps.start(letta={"streaming": True})
    agent = fake_letta.add_agent("Flaky", stream_error="LLM API unavailable")
    await app.scheduler.run_now()
    row = await app.agents.get(agent.id)
    assert row is not None and row.room_id
    await admin_user.join(row.room_id)
    await admin_user.send_text(row.room_id, "are you there?")
    told = await admin_user.wait_for_event(
        row.room_id,
        lambda e: e["sender"] == row.mxid and e["content"].get("msgtype") == "m.notice",
    )
    assert told["content"]["body"] == (
        "Letta had an internal error. The answer above may be incomplete."
    )
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{app.config.appservice.address}/metrics") as resp:
            text = await resp.text()
    assert sample(text, "letta_appservice_letta_errors_total", kind="server") == 1
    # The request itself started fine: one timed message request, no time for the failure.
    assert sample(text, "letta_appservice_letta_request_seconds_count", operation="message") == 1
