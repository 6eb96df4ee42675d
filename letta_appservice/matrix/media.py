"""Downloading media people sent: the authenticated media API (Matrix 1.11), falling back to
the legacy one on homeservers without it; never more than a limit read into memory. Uploading
what agents give."""

from __future__ import annotations

import json
from urllib.parse import quote

import aiohttp
from mautrix.api import MediaPath, Method
from mautrix.appservice import AppServiceAPI
from mautrix.errors import MatrixConnectionError, MatrixRequestError, make_request_error

from ..errors import TooLarge, read_at_most

__all__ = ["TooLarge", "download", "upload"]


def _mxc_parts(mxc: str) -> tuple[str, str]:
    if not mxc.startswith("mxc://"):
        raise ValueError(f"not an mxc URI: {mxc[:100]!r}")
    server, _, media_id = mxc[len("mxc://") :].partition("/")
    if not server or not media_id or "/" in media_id:
        raise ValueError(f"not an mxc URI: {mxc[:100]!r}")
    return server, media_id


async def download(api: AppServiceAPI, mxc: str, limit: int) -> bytes:
    """The bytes behind ``mxc``, asked for as ``api``'s user. Raises TooLarge past ``limit``
    bytes, ValueError for a malformed URI, MatrixRequestError / MatrixConnectionError for the
    homeserver's failures (5xx and connection errors are worth retrying)."""
    server, media_id = _mxc_parts(mxc)
    tail = f"{quote(server, safe='')}/{quote(media_id, safe='')}"
    base = str(api.base_url).rstrip("/")
    params = {"allow_redirect": "true"}
    if api.as_user_id:
        params["user_id"] = api.as_user_id
    headers = {"Authorization": f"Bearer {api.token}"}
    try:
        url = f"{base}/_matrix/client/v1/media/download/{tail}"
        return await _get(api, url, params, headers, limit)
    except MatrixRequestError as e:
        # No authenticated media (before Matrix 1.11): the legacy endpoint has the file.
        if e.http_status not in (400, 404, 405) or e.errcode == "M_NOT_FOUND":
            raise
    return await _get(api, f"{base}/_matrix/media/v3/download/{tail}", params, headers, limit)


async def _get(
    api: AppServiceAPI, url: str, params: dict[str, str], headers: dict[str, str], limit: int
) -> bytes:
    try:
        async with api.session.get(url, params=params, headers=headers) as resp:
            if resp.status >= 400:
                text = await resp.text(errors="replace")
                try:
                    body = json.loads(text)
                except ValueError:
                    body = None
                if not isinstance(body, dict):
                    body = {}
                errcode, error = body.get("errcode"), body.get("error")
                raise make_request_error(resp.status, text[:300], errcode, error)
            return await read_at_most(resp, limit)
    except aiohttp.ClientError as e:
        raise MatrixConnectionError(str(e)) from e


async def upload(api: AppServiceAPI, data: bytes, mimetype: str, filename: str) -> str:
    """``data`` into the homeserver's media repository as ``api``'s user; its mxc URI.
    MatrixRequestError / MatrixConnectionError when the homeserver does not take it."""
    resp = await api.request(
        Method.POST,
        MediaPath.v3.upload,
        content=data,
        headers={"Content-Type": mimetype or "application/octet-stream"},
        query_params={"filename": filename},
    )
    uri = resp.get("content_uri") if isinstance(resp, dict) else None
    if not isinstance(uri, str):
        raise make_request_error(200, str(resp)[:300], None, "upload without content_uri")
    return uri
