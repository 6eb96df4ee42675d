"""What of people's media reaches agents, and how (the ``media`` section)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs

from .checks import _http_url, _positive, _str_list

MiB = 1024 * 1024


@attrs.frozen
class MediaConfig:
    """Images go to the agent as image parts, files into its Letta folder, voice transcribed
    where a transcription endpoint is set (else the person is told it cannot be heard)."""

    images: bool = True
    max_image_bytes: int = 5 * MiB
    image_types: tuple[str, ...] = ("image/png", "image/jpeg", "image/gif", "image/webp")
    files: bool = True
    max_file_bytes: int = 20 * MiB
    transcription_url: str = ""  # an OpenAI-compatible API base ("" = no transcription)
    transcription_key: str = attrs.field(default="", repr=False)
    transcription_model: str = "whisper-1"
    max_audio_bytes: int = 25 * MiB
    # Images and files in agents' answers and tool results (data: URIs, links to the Letta
    # server) are posted to Matrix as m.image / m.file, within the same size limits.
    from_agents: bool = True


def _optional_url(v: str) -> str:
    return _http_url(v) if v else ""


def media_config(get: Callable[..., Any]) -> MediaConfig:
    """The section, read with the validator's ``get(key, kind, check)``."""
    return MediaConfig(
        images=get("media.images", bool),
        max_image_bytes=get("media.max_image_bytes", int, _positive),
        image_types=tuple(t.lower() for t in get("media.image_types", list, _str_list)),
        files=get("media.files", bool),
        max_file_bytes=get("media.max_file_bytes", int, _positive),
        transcription_url=get("media.transcription_url", str, _optional_url).rstrip("/"),
        transcription_key=get("media.transcription_key", str),
        transcription_model=get("media.transcription_model", str),
        max_audio_bytes=get("media.max_audio_bytes", int, _positive),
        from_agents=get("media.from_agents", bool),
    )
