"""Images and files in what agents say (pure): which are taken out of the text, what the text
keeps, and the limits and failures of posting them."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from letta_appservice.chat.attachments import Ref, decode_data, extract, filename
from letta_appservice.chat.content import message_content
from letta_appservice.chat.parts import ATTACHMENT, Part, build_parts
from letta_appservice.chat.uploads import AgentFiles
from letta_appservice.config.media import MediaConfig
from letta_appservice.letta import LettaClient
from letta_appservice.letta.models import LettaMessage

LETTA = "http://letta:8283"
DOT = "data:image/png;base64," + base64.b64encode(b"\x89PNG-dot").decode()


def test_data_uris_and_links_to_letta_become_attachments_the_text_names() -> None:
    text = (
        f"Chart: ![sales]({DOT}) and [the report]({LETTA}/v1/files/r.pdf), "
        f"also {LETTA}/v1/x/plot.svg; elsewhere ![cat](https://example.org/cat.png)."
    )
    kept, refs = extract(text, LETTA)
    assert kept == (
        "Chart: [image: sales] and [file: the report], also [file: plot.svg]; elsewhere "
        "![cat](https://example.org/cat.png)."
    )
    assert refs == [
        Ref(DOT, "sales", True),
        Ref(f"{LETTA}/v1/files/r.pdf", "the report", False),
        Ref(f"{LETTA}/v1/x/plot.svg", "plot.svg", False),
    ]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Code shows them as written.
        (f"Use `![x]({DOT})` or\n```\n{LETTA}/v1/health/\n```", None),
        # Another server with the same prefix is not Letta.
        (f"[x]({LETTA}0/v1/a.png)", None),
        # A link still being streamed is hidden until it is complete.
        ("Here: ![a chart](data:image/png;base64,iVBO", "Here: [image: a chart]"),
        (f"Here: [log]({LETTA}/v1/fi", "Here: [file: log]"),
        # A bare data: URI; a label with brackets.
        (f"{DOT} and ![a [b]]({DOT})", "[image: image] and ![a [b]]([image: image])"),
    ],
)
def test_what_stays_as_written(text: str, expected: str | None) -> None:
    kept, _ = extract(text, LETTA)
    assert kept == (text if expected is None else expected)


def test_data_uris_decode_or_say_they_are_broken() -> None:
    assert decode_data(DOT) == b"\x89PNG-dot"
    assert decode_data("data:text/plain,hello%20world") == b"hello world"
    with pytest.raises(ValueError):
        decode_data("data:image/png;base64,iVBORw0KGgoAAAANSUhEU")  # cut short by Letta
    assert filename("sales", "image/png") == "sales.png"
    assert filename("../../etc/passwd", "text/plain") == "etcpasswd.txt"
    assert filename("report.pdf", "application/pdf") == "report.pdf"


def test_an_answer_lists_each_attachment_once_after_its_text() -> None:
    tool = LettaMessage("tool_return", "m1", f"![dot]({DOT})")
    answer = LettaMessage("assistant", "m2", f"tool result: ![dot]({DOT})")
    parts = build_parts([tool, answer], "end_turn", attach=LETTA)
    # The tool's result is not shown (show_tools off), its image is; the answer repeats it.
    assert parts == [
        Part(ATTACHMENT, "dot", source=DOT),
        Part("m.text", "tool result: [image: dot]"),
    ]
    # Switched off: as written.
    assert build_parts([answer], "end_turn")[0].body == f"tool result: ![dot]({DOT})"
    # Never posted as the raw source.
    content = message_content(Part(ATTACHMENT, "dot", source=DOT), None)
    assert content["msgtype"] == "m.notice" and DOT not in str(content)


class Api:
    """The puppet's homeserver API: records uploads."""

    def __init__(self) -> None:
        self.uploads: list[tuple[bytes, dict[str, Any]]] = []

    async def request(self, method: Any, path: Any, **kw: Any) -> dict[str, Any]:
        self.uploads.append((kw["content"], {**kw["headers"], **kw["query_params"]}))
        return {"content_uri": "mxc://hs/up1"}


async def test_posting_checks_the_limits_and_says_why_not() -> None:
    letta = LettaClient(LETTA)
    files = AgentFiles(MediaConfig(max_image_bytes=7, max_file_bytes=20), letta)
    api = Api()
    image = await files.post(api, Part(ATTACHMENT, "dot", source=DOT))  # type: ignore[arg-type]
    assert image.body == (
        "“dot” (from the agent's answer) could not be posted: it is 8 bytes; the limit is 7 bytes."
    )
    small = "data:image/gif;base64," + base64.b64encode(b"GIF89a").decode()
    gif = await files.post(api, Part(ATTACHMENT, "g", source=small))  # type: ignore[arg-type]
    assert gif == Part("m.image", "g.gif", url="mxc://hs/up1", mimetype="image/gif", size=6)
    assert api.uploads[-1] == (b"GIF89a", {"Content-Type": "image/gif", "filename": "g.gif"})
    big = "data:text/csv," + "x" * 21
    refused = await files.post(api, Part(ATTACHMENT, "t", source=big))  # type: ignore[arg-type]
    assert refused == Part(
        "m.notice", "“t” (from the agent's answer) could not be posted: it is 21 bytes; the "
        "limit is 20 bytes."
    )  # fmt: skip
    cut = await files.post(api, Part(ATTACHMENT, "c", source="data:image/png;base64,iVBORw0"))  # type: ignore[arg-type]
    assert cut.body.endswith("could not be posted: its data is malformed or cut short.")
    pdf = "data:application/pdf;base64," + base64.b64encode(b"%PDF-1.4").decode()
    doc = await files.post(api, Part(ATTACHMENT, "r", source=pdf))  # type: ignore[arg-type]
    assert (doc.msgtype, doc.body, doc.size) == ("m.file", "r.pdf", 8)
    assert len(api.uploads) == 2
    await letta.close()
