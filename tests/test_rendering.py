"""chat/rendering.py: Markdown features users expect, and nothing a reply could use to attack the page."""

import random
from pathlib import Path

import pytest
from django.conf import settings

from chat.models import Message
from chat.rendering import (
    complete_blocks,
    duration_text,
    format_stats,
    pygments_css,
    render_markdown,
    token_text,
)


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
    text = "# Title\n\nFirst para.\n\n```py\nx = 1\n\ny = 2\n```\n\nStill wri"
    end = complete_blocks(text, 0)
    assert text[:end] == "# Title\n\nFirst para.\n\n```py\nx = 1\n\ny = 2\n```\n\n"  # not inside the fence
    assert complete_blocks(text, end) == end  # the tail is unfinished
    assert complete_blocks("```\nopen fence\n\nstill code\n", 0) == 0
    assert complete_blocks("no blank line yet", 0) == 0


def streamed_spans(text: str, cuts: list[int]) -> tuple[list[str], int]:
    """What a streaming reply sends in `render` frames when its text arrives in pieces ending at
    `cuts`: each finished span rendered on its own, as chat/generation.py does."""
    html, rendered = [], 0
    for cut in sorted(cuts):
        end = complete_blocks(text[:cut], rendered)
        assert rendered <= end <= cut
        if end > rendered:
            html.append(render_markdown(text[rendered:end]))
            rendered = end
    return html, rendered


def test_a_four_backtick_fence_is_not_closed_by_a_three_backtick_line():
    text = "````md\n```py\nx = 1\n```\n\nstill inside\n"
    assert complete_blocks(text, 0) == 0
    closed = text + "````\n"
    assert complete_blocks(closed, 0) == len(closed)
    assert render_markdown(closed).count("<pre>") == 1


def test_a_fence_closed_at_the_very_end_is_finished():
    text = "Intro.\n\n~~~\ncode\n~~~\n"
    assert complete_blocks(text, 0) == len(text)
    # The closing line is not finished until its newline: "~~~x" would not close the fence.
    assert complete_blocks(text[:-1], 0) == len("Intro.\n\n")


def test_a_list_is_not_finished_while_a_later_item_may_still_join_it():
    text = "- one\n  - nested\n\n"
    assert complete_blocks(text, 0) == 0  # a blank line does not end a list
    text += "  more of one\n- two\n\nAfter.\n"
    end = complete_blocks(text, 0)
    assert text[:end] == "- one\n  - nested\n\n  more of one\n- two\n\n"
    assert render_markdown(text[:end]) + render_markdown(text[end:]) == render_markdown(text)


def test_a_list_is_finished_once_the_line_after_its_blank_line_begins_with_text():
    text = "1. **first**\n2. second\n\n"
    assert complete_blocks(text + "-", 0) == 0  # "- more": a list item, but of another list? not yet known
    assert complete_blocks(text + "  ", 0) == 0  # may be indented into the last item
    assert complete_blocks(text + "and then", 0) == len(text)


def test_a_table_is_finished_by_a_blank_line_not_by_a_row():
    text = "| a | b |\n|:--|--:|\n| 1 | 2 |\n"
    assert complete_blocks(text, 0) == 0  # the next line may be another row
    assert complete_blocks(text + "\n", 0) == len(text) + 1


def test_text_without_a_newline_is_never_finished():
    assert complete_blocks("no newline yet", 0) == 0
    assert complete_blocks("# Title", 0) == 0
    assert complete_blocks("# Title\nPara", 0) == len("# Title\n")


def test_windows_line_endings_end_blocks_at_the_same_places():
    text = "# Title\r\n\r\nPara one\r\n\r\n```\r\ncode\r\n```\r\nTail"
    end = complete_blocks(text, 0)
    assert text[:end] == "# Title\r\n\r\nPara one\r\n\r\n```\r\ncode\r\n```\r\n"
    assert complete_blocks("Para\r\n\r", 0) == 0  # "\r" alone may be half of "\r\n"


# Blocks a reply is made of. No link reference definitions: one defined after its use links it
# only when the whole reply is rendered, so no streaming split can match that.
BLOCKS = [
    "# Heading\n",
    "Setext heading\n===\n",
    "A paragraph with *emphasis*,\n`code` and a [link](https://example.com).\n",
    "Paragraph then\n---\n",
    "- a\n- b\n  - nested\n    - deeper\n",
    "- loose\n\n- list\n",
    "1. one\n2. two\n\n   still two\n",
    "* star list\n",
    "> quoted\n> more\n",
    "> lazy\ncontinuation\n",
    "| a | b |\n|:--|--:|\n| 1 | 2 |\n",
    "````md\n```py\nx = 1\n```\n````\n",
    "~~~\ncode\n\nafter a blank\n~~~\n",
    "```py\nprint('hi')\n```\n",
    "    indented code\n\n    more code\n",
    "***\n",
    "Text\n",
]
ENDINGS = ["", "```\nnever closed\n", "Half a line", "- last item"]


def random_reply(rng: random.Random) -> str:
    parts = []
    for _ in range(rng.randint(1, 8)):
        parts.append(rng.choice(BLOCKS))
        parts.append(rng.choice(["", "\n", "\n\n"]))
    text = "".join(parts) + rng.choice(ENDINGS)
    return text.replace("\n", "\r\n") if rng.random() < 0.2 else text


def test_rendering_the_streamed_spans_one_by_one_gives_the_whole_replys_html():
    """The page shows the `render` frames' HTML in place of the text they cover and swaps in
    the whole reply's rendering at the end: each span must render alone exactly as it does in
    the whole reply, or the page shows something else while streaming (a fence closed too
    early, a loose list split in two)."""
    rng = random.Random(13)
    for _ in range(400):
        text = random_reply(rng)
        cuts = rng.sample(range(1, len(text) + 1), k=min(len(text), rng.randint(1, 12)))
        html, rendered = streamed_spans(text, [*cuts, len(text)])
        assert "".join(html) + render_markdown(text[rendered:]) == render_markdown(text), (text, cuts)


def test_streaming_one_character_at_a_time_renders_every_block_before_the_last():
    text = "".join(BLOCKS) + "\nThe end.\n"
    html, rendered = streamed_spans(text, list(range(1, len(text) + 1)))
    assert "".join(html) + render_markdown(text[rendered:]) == render_markdown(text)
    assert text[rendered:] == "The end.\n"
    assert len(html) > len(BLOCKS) // 2  # blocks appear as they finish, not all at the end


@pytest.mark.parametrize(
    "ms, shown",
    [
        (31.4, "31 ms"),
        (850.4471, "850 ms"),
        (999.7, "1.0 s"),
        (3248.337167000045, "3.2 s"),
        (59_970, "1 min"),
        (125_000, "2 min 5 s"),
    ],
)
def test_durations_read_as_a_person_says_them(ms, shown):
    assert duration_text(ms) == shown


def test_token_figures_have_thousands_separators_and_say_when_unknown():
    assert [token_text(n) for n in (0, 4321, 1_234_567, None)] == ["0", "4,321", "1,234,567", "unknown"]
