"""Markdown -> Matrix HTML for agent replies: what readers see, and what never gets through."""

from __future__ import annotations

import re

import pytest

from letta_appservice.matrix.format import mention_pill, render_collapsed, render_markdown


def html_of(text: str) -> str:
    _, formatted = render_markdown(text)
    assert formatted is not None, f"expected HTML for {text!r}"
    return formatted


def test_plain_text_is_sent_without_html() -> None:
    assert render_markdown("  Hello there.\nHow can I help?\n\nBye  ") == (
        "Hello there.\nHow can I help?\n\nBye",
        None,
    )


def test_plain_body_is_the_trimmed_markdown_source() -> None:
    body, formatted = render_markdown("\n**Done.** See `x`.\n")
    assert body == "**Done.** See `x`."
    assert formatted == "<p><strong>Done.</strong> See <code>x</code>.</p>"


def test_fenced_code_block_keeps_its_language_and_escapes_content() -> None:
    formatted = html_of("```python\nif a < b:\n    print('<b>')\n```")
    assert formatted.startswith('<pre><code class="language-python">')
    assert "if a &lt; b:\n    print('&lt;b&gt;')" in formatted


def test_lists_keep_their_numbering() -> None:
    assert html_of("- one\n- two") == "<ul>\n<li>one</li>\n<li>two</li>\n</ul>"
    assert html_of("3. three\n4. four") == '<ol start="3">\n<li>three</li>\n<li>four</li>\n</ol>'


def test_links_headings_and_quotes() -> None:
    assert html_of("[Letta](https://letta.com)") == '<p><a href="https://letta.com">Letta</a></p>'
    assert html_of("## Plan") == "<h2>Plan</h2>"
    assert html_of("> quoted") == "<blockquote>\n<p>quoted</p>\n</blockquote>"


def test_bold_italic_and_strikethrough() -> None:
    assert html_of("**b** *i* ~~gone~~") == "<p><strong>b</strong> <em>i</em> <s>gone</s></p>"


def test_table_renders_without_style_attributes() -> None:
    formatted = html_of("| name | n |\n|---|--:|\n| a | 1 |")
    assert "<table>" in formatted and "<th>name</th>" in formatted
    assert "<td>1</td>" in formatted  # the alignment style is not in the Matrix allowlist
    assert "style=" not in formatted


def test_hard_line_breaks_inside_formatted_text() -> None:
    assert html_of("**a**\nb") == "<p><strong>a</strong><br>\nb</p>"


@pytest.mark.parametrize(
    "attack",
    [
        "**hi** <script>alert(1)</script>",
        "**hi** <img src=x onerror=alert(1)>",
        '**hi** <a href="javascript:alert(1)">click</a>',
        "**hi** [click](javascript:alert(1))",
        '**hi** <iframe src="https://evil.example"></iframe>',
        '**hi** <div onclick="alert(1)" style="position:fixed">x</div>',
        '**hi** <img alt="x><script>alert(1)</script>" src="https://e.example/p.png">',
        "**hi** <svg onload=alert(1)></svg><style>body{}</style>",
    ],
)
def test_xss_vectors_are_stripped(attack: str) -> None:
    body, formatted = render_markdown(attack)
    assert body == attack  # the plain body is shown as text by clients, never as markup
    assert formatted is not None and "<strong>hi</strong>" in formatted
    lowered = formatted.lower()
    for forbidden in ("<script", "onerror", "onclick", "onload", "<iframe", "<svg", "<style"):
        assert forbidden not in lowered
    assert 'href="javascript' not in lowered
    assert "style=" not in lowered
    assert "alert(1)</script>" not in lowered


def test_unsafe_markup_alone_falls_back_to_plain_text() -> None:
    assert render_markdown("<img src=x onerror=alert(1)>")[1] is None
    assert render_markdown("<script>alert(1)</script>")[1] is None


def test_harmless_text_inside_stripped_tags_stays() -> None:
    assert html_of("<marquee>**still here**</marquee>") == "<p><strong>still here</strong></p>"


def test_mxc_images_are_kept_other_images_are_not_loaded() -> None:
    assert html_of("![cat](mxc://example.org/abc)") == (
        '<p><img src="mxc://example.org/abc" alt="cat"></p>'
    )
    # A Markdown image from the web becomes a link: clients must not fetch it for the reader.
    assert html_of("![cat](https://e.example/cat.png)") == (
        '<p><a href="https://e.example/cat.png">cat</a></p>'
    )
    raw = html_of('**x** <img src="https://e.example/cat.png" alt="cat">')
    assert "<img" not in raw and "e.example" not in raw


def test_only_spec_attributes_survive() -> None:
    formatted = html_of(
        '<font color="#ff0000" data-mx-color="red" face="x">c</font> '
        '<code class="language-rust evil">x</code> <a href="/relative" target="_blank">r</a>'
    )
    assert '<font color="#ff0000">c</font>' in formatted
    assert '<code class="language-rust">x</code>' in formatted
    assert '<a target="_blank">r</a>' in formatted


def test_allowed_link_schemes() -> None:
    formatted = html_of("[m](mailto:a@example.org) [u](matrix:u/alice:example.org)")
    assert 'href="mailto:a@example.org"' in formatted
    assert 'href="matrix:u/alice:example.org"' in formatted
    assert "href=" not in html_of('<a href="ftp://x.example/f">f</a> <a href="data:x">d</a>')


def test_collapsed_block_escapes_the_body() -> None:
    plain, formatted = render_collapsed("Tool call: search", '{"q": "<script>x</script>"}')
    assert plain == 'Tool call: search: {"q": "<script>x</script>"}'
    assert formatted == (
        "<details><summary>Tool call: search</summary><pre><code>"
        '{"q": "&lt;script&gt;x&lt;/script&gt;"}'
        "</code></pre></details>"
    )


def test_collapsed_block_keeps_lines_and_escapes_summary() -> None:
    plain, formatted = render_collapsed("<b>Reasoning</b>", "step 1\nstep 2")
    assert plain == "<b>Reasoning</b>:\nstep 1\nstep 2"
    assert formatted.startswith("<details><summary>&lt;b&gt;Reasoning&lt;/b&gt;</summary>")
    assert "<pre><code>step 1\nstep 2</code></pre>" in formatted


def test_collapsed_block_can_render_markdown_safely() -> None:
    _, formatted = render_collapsed(
        "Reasoning", "I **think** <script>alert(1)</script>", markdown=True
    )
    assert formatted.startswith("<details><summary>Reasoning</summary>")
    assert "<strong>think</strong>" in formatted
    assert "script" not in formatted


def test_mention_pill() -> None:
    assert mention_pill("@agent_1:example.org", "Ada <bot>") == (
        '<a href="https://matrix.to/#/@agent_1:example.org">Ada &lt;bot&gt;</a>'
    )
    assert re.search(r'href="https://matrix\.to/#/@a%2Fb:x"', mention_pill("@a/b:x", "A"))
