"""Fetching what an agent links to on the Letta server itself (with the bridge's API key, which
never goes anywhere else): never more than a limit read into memory."""

from __future__ import annotations

import aiohttp

from ..errors import read_at_most
from .client import LettaClient
from .errors import http_error, read_detail, safe_url, transport_errors


def on_server(base_url: str, url: str) -> bool:
    """Whether ``url`` is on the Letta server at ``base_url`` (same scheme, host, port and
    path prefix)."""
    return (url.lower() + "/").startswith(base_url.rstrip("/").lower() + "/")


async def download(client: LettaClient, url: str, limit: int) -> tuple[bytes, str]:
    """The body and media type behind ``url`` on the Letta server. Raises ValueError for a
    URL elsewhere, TooLarge past ``limit`` bytes, LettaError for the server's failures.
    Redirects are not followed: the key must not reach another host."""
    if not on_server(client.base_url, url):
        raise ValueError("not a URL of the Letta server")
    shown = safe_url(url)
    with transport_errors(f"Letta GET {shown}", shown, client.timeout):
        async with client.http().get(
            url,
            headers={k: v for k, v in client.headers.items() if k != "Accept"},
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=client.timeout),
        ) as resp:
            if resp.status >= 300:
                raise http_error(resp.status, "GET", shown, await read_detail(resp))
            return await read_at_most(resp, limit), resp.content_type
