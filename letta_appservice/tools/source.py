"""The Python source of the Matrix tools as Letta runs them (pure).

Letta runs a custom tool's source in its sandbox, standard library only. Each tool is one
self-contained function: it posts its arguments to the bridge's tool API with the calling
agent's id (``LETTA_AGENT_ID``, set by Letta) and the agent's secret and the bridge's URL (agent
secrets the bridge set), and returns the bridge's answer text. The docstring is what the model
reads. ``VERSION`` changes whenever any of this does, so Letta gets the new code.
"""

from __future__ import annotations

import hashlib

SECRET_ENV = "LETTA_APPSERVICE_TOOL_SECRET"
URL_ENV = "LETTA_APPSERVICE_TOOL_URL"
TAG = "letta-appservice"
API_PATH = "/_letta_appservice/tools/v1/"
# Seconds a tool waits for the bridge (matrix_talk_to_agent waits for another agent).
HTTP_TIMEOUT = 600

_CALL = f'''
    import json, os, urllib.error, urllib.request

    url = os.environ.get("{URL_ENV}", "").rstrip("/")
    if not url:
        return "Error: the Matrix tools are not set up for this agent (no bridge URL)."
    request = urllib.request.Request(
        url + "{API_PATH}" + __TOOL__,
        data=json.dumps(__ARGS__).encode(),
        method="POST",
        headers={{
            "Content-Type": "application/json",
            "X-Letta-Agent-Id": os.environ.get("LETTA_AGENT_ID", ""),
            "Authorization": "Bearer " + os.environ.get("{SECRET_ENV}", ""),
        }},
    )
    try:
        with urllib.request.urlopen(request, timeout={HTTP_TIMEOUT}) as response:
            return str(json.loads(response.read().decode()).get("result", ""))
    except urllib.error.HTTPError as error:
        try:
            return "Error: " + str(json.loads(error.read().decode()).get("error"))
        except ValueError:
            return "Error: the Matrix bridge answered HTTP " + str(error.code)
    except (OSError, ValueError) as error:
        return "Error: the Matrix bridge could not be reached: " + str(error)
'''

_TOOLS = {
    "matrix_list_rooms": (
        "",
        """List the Matrix rooms you are in (your Matrix account is the bridge's puppet of you).

    Returns:
        str: one line per room: its name, its id (use it with the other matrix_ tools), its
        kind (your own room, a direct chat, a group room) and how many members it has.
    """,
        "{}",
    ),
    "matrix_read_room": (
        "room: str, limit: int = 20",
        """Read the latest text messages of a Matrix room you are in.

    Args:
        room: the room id (from matrix_list_rooms, e.g. "!abc:example.org") or its name.
        limit: how many of the latest messages to read (1 to 100).

    Returns:
        str: the messages, oldest first, one per line: time (UTC), sender's name, text.
    """,
        '{"room": room, "limit": limit}',
    ),
    "matrix_send_message": (
        "room: str, text: str",
        """Post a message into a Matrix room you are in, as yourself. Markdown is rendered.

    Args:
        room: the room id (from matrix_list_rooms) or its name.
        text: the message (Markdown).

    Returns:
        str: "sent" with the event id, or why it could not be sent.
    """,
        '{"room": room, "text": text}',
    ),
    "matrix_message_person": (
        "user: str, text: str",
        """Send a direct message to a person on Matrix (a private chat between you and them,
    created the first time and reused after). Only people allowed to use this bridge.

    Args:
        user: the person's Matrix ID, e.g. "@alice:example.org".
        text: the message (Markdown).

    Returns:
        str: "sent" with the room id, or why it could not be sent.
    """,
        '{"user": user, "text": text}',
    ),
    "matrix_talk_to_agent": (
        "agent: str, message: str",
        """Send a message to another agent on this bridge and get its answer. The exchange
    happens in the other agent's Matrix room, where people can read along.

    Args:
        agent: the other agent's name or id.
        message: what to tell or ask it.

    Returns:
        str: the other agent's answer; or, when it takes long, a note that the answer will
        reach you later as a message.
    """,
        '{"agent": agent, "message": message}',
    ),
}


def _source(name: str, params: str, doc: str, args: str) -> str:
    call = _CALL.replace("__TOOL__", repr(name)).replace("__ARGS__", args)
    return f'def {name}({params}) -> str:\n    """{doc}"""{call}'


SOURCES: dict[str, str] = {name: _source(name, *spec) for name, spec in _TOOLS.items()}
NAMES: tuple[str, ...] = tuple(SOURCES)
VERSION = hashlib.sha256("\n".join(SOURCES.values()).encode()).hexdigest()[:12]
