"""Markdown -> Matrix ``org.matrix.custom.html`` for agent replies (pure, no I/O)."""

from __future__ import annotations

import html
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

import nh3
from markdown_it import MarkdownIt
from markdown_it.token import Token

TEXT, NOTICE, EMOTE = "m.text", "m.notice", "m.emote"
IMAGE, FILE = "m.image", "m.file"
HTML = "org.matrix.custom.html"
# The tags the client-server spec lists for org.matrix.custom.html ("m.room.message msgtypes").
ALLOWED_TAGS: frozenset[str] = frozenset(
    {
        "font", "del", "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "p", "a", "ul", "ol",
        "sup", "sub", "li", "b", "i", "u", "strong", "em", "s", "code", "hr", "br", "div",
        "table", "thead", "tbody", "tr", "th", "td", "caption", "pre", "span", "img",
        "details", "summary",
    }
)  # fmt: skip
ALLOWED_ATTRIBUTES: dict[str, set[str]] = {
    "font": {"data-mx-bg-color", "data-mx-color", "color"},
    "span": {"data-mx-bg-color", "data-mx-color", "data-mx-spoiler", "data-mx-maths"},
    "div": {"data-mx-maths"},
    "a": {"href", "target"},
    "img": {"src", "width", "height", "alt", "title"},
    "ol": {"start"},
    "code": {"class"},
}
LINK_SCHEMES: frozenset[str] = frozenset({"https", "http", "mailto", "matrix"})
URL_SCHEMES: frozenset[str] = LINK_SCHEMES | {"mxc"}

_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_NUMBER = re.compile(r"[0-9]{1,6}")
_LANGUAGE_CLASS = re.compile(r"language-[A-Za-z0-9_+#.-]{1,40}")
_SCHEME = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")
# nh3 (html5ever) always serialises attribute values in double quotes with '"' escaped, so an
# <img> tag can be matched exactly: used to drop images whose src the attribute filter removed.
_IMG_TAG = re.compile(r'<img((?:\s+[\w-]+(?:="[^"]*")?)*)\s*/?>')
_SRC_ATTRIBUTE = re.compile(r'\ssrc="')
_PLAIN_ONLY_TAGS = re.compile(r"</?p>|<br\s*/?>")
_ANY_TAG = re.compile(r'<(?:[^<>"]|"[^"]*")*>')


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(url.strip())
    return match.group(1).lower() if match else None


def _attribute_filter(tag: str, attribute: str, value: str) -> str | None:
    """Per-attribute rules nh3's global allowlists cannot express; None drops the attribute."""
    if attribute in ("data-mx-color", "data-mx-bg-color", "color"):
        return value if _COLOR.fullmatch(value) else None
    if attribute in ("width", "height", "start"):
        return value if _NUMBER.fullmatch(value) else None
    if tag == "code" and attribute == "class":
        # The spec only allows language-* classes (for syntax highlighting).
        kept = [c for c in value.split() if _LANGUAGE_CLASS.fullmatch(c)]
        return kept[0] if kept else None
    if tag == "img" and attribute == "src":
        # Clients only load media from the homeserver: an http(s) src would leak the reader's IP.
        return value if _scheme(value) == "mxc" else None
    if tag == "a" and attribute == "href":
        # Relative links mean nothing in a chat message, and mxc links are not clickable.
        return value if _scheme(value) in LINK_SCHEMES else None
    if tag == "a" and attribute == "target":
        return "_blank" if value == "_blank" else None
    return value


def sanitize_html(fragment: str) -> str:
    """Reduce ``fragment`` to what the Matrix spec allows; scripts and handlers are removed."""
    cleaned = _clean(fragment)
    without_bad_images = _IMG_TAG.sub(_drop_image_without_src, cleaned)
    if without_bad_images != cleaned:
        # Cleaning again is cheap and keeps the regex edit from ever producing unsafe markup.
        cleaned = _clean(without_bad_images)
    return cleaned


def _drop_image_without_src(match: re.Match[str]) -> str:
    return match.group(0) if _SRC_ATTRIBUTE.search(match.group(1)) else ""


def _clean(fragment: str) -> str:
    return nh3.clean(
        fragment,
        tags=set(ALLOWED_TAGS),
        clean_content_tags={"script", "style"},
        attributes=ALLOWED_ATTRIBUTES,
        attribute_filter=_attribute_filter,
        link_rel=None,
        url_schemes=set(URL_SCHEMES),
    )


def _render_image(tokens: Sequence[Token], idx: int, options: Any, env: Any, renderer: Any) -> str:
    """Render mxc images; any other image becomes a link so the reader still gets the URL."""
    token = tokens[idx]
    src = str(token.attrGet("src") or "")
    alt = renderer.renderInlineAsText(token.children or [], options, env) or src
    if _scheme(src) == "mxc":
        title = token.attrGet("title")
        title_attr = f' title="{html.escape(str(title))}"' if title else ""
        return f'<img src="{html.escape(src)}" alt="{html.escape(alt)}"{title_attr} />'
    return f'<a href="{html.escape(src)}">{html.escape(alt)}</a>'


def _build_markdown() -> MarkdownIt:
    # breaks=True: agents (like people typing in Element) mean a single newline as a line break.
    # linkify (bare URLs become links) needs linkify-it-py, a declared dependency.
    options: dict[str, Any] = {"breaks": True, "linkify": True}
    md = MarkdownIt("commonmark", options).enable(["table", "strikethrough", "linkify"])

    def image_rule(self: Any, tokens: Sequence[Token], idx: int, opts: Any, env: Any) -> str:
        return _render_image(tokens, idx, opts, env, self)

    md.add_render_rule("image", image_rule)
    return md


_MARKDOWN = _build_markdown()


def _is_plain(rendered: str, text: str) -> bool:
    """True when the HTML says nothing the plain text does not: paragraphs and line breaks only,
    and the same words (so no Markdown escape or entity was interpreted)."""
    stripped = _PLAIN_ONLY_TAGS.sub(" ", rendered)
    if "<" in stripped:
        return False
    return html.unescape(stripped).split() == text.split()


def _has_content(fragment: str) -> bool:
    return "<img" in fragment or bool(html.unescape(_ANY_TAG.sub("", fragment)).strip())


def render_markdown(text: str) -> tuple[str, str | None]:
    """Markdown ``text`` -> ``(plain_body, formatted_body or None)``.

    The plain body is the Markdown source, trimmed (what mautrix bridges send). The HTML is
    None when the text has no formatting, so plain text goes out without ``formatted_body``.
    """
    body = text.strip()
    if not body:
        return body, None
    rendered = _MARKDOWN.render(body).strip()
    if _is_plain(rendered, body):
        return body, None
    formatted = sanitize_html(rendered).strip()
    if _is_plain(formatted, body) or not _has_content(formatted):
        # Nothing left worth formatting (e.g. all of it was unsafe markup): send plain text.
        return body, None
    return body, formatted


def render_collapsed(summary: str, body: str, *, markdown: bool = False) -> tuple[str, str]:
    """A collapsed block (reasoning, tool calls): ``(plain, <details> html)``.

    The body is shown verbatim in a code block unless ``markdown`` is true, in which case it is
    rendered and sanitised like a reply.
    """
    summary = summary.strip()
    body = body.strip()
    separator = "\n" if "\n" in body else " "
    plain = f"{summary}:{separator}{body}" if body else summary
    if markdown:
        _, rendered = render_markdown(body)
        plain_html = html.escape(body).replace("\n", "<br>")
        inner = rendered if rendered is not None else f"<p>{plain_html}</p>"
    else:
        inner = f"<pre><code>{html.escape(body)}</code></pre>"
    details = f"<details><summary>{html.escape(summary)}</summary>{inner}</details>"
    return plain, sanitize_html(details)


def mention_pill(mxid: str, name: str) -> str:
    """HTML for a user mention: a matrix.to link Element shows as a pill."""
    href = "https://matrix.to/#/" + quote(mxid, safe="@:")
    return f'<a href="{html.escape(href)}">{html.escape(name)}</a>'
