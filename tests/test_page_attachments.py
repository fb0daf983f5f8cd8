"""Files and images in the chat page (issue #16): attaching by the paperclip, by dropping and by
pasting, each upload a chip with its size and token cost that can be removed before sending;
a refused file says why and is not sent; a send waits for an upload still running; a sent
message shows its files (thumbnails that open, chips that download), also after a reload
(fixtures and helpers: tests/browser.py). Test files are made here, not committed."""

from __future__ import annotations

import base64
import io
import re
import struct
import zlib
from urllib.parse import urljoin, urlparse

import pytest
from PIL import Image

from tests.browser import (  # noqa: F401  (fixtures: pytest finds them by name in this module)
    USER_MESSAGES,
    body,
    browser,
    contrast,
    expect,
    gates,
    last_reply,
    llm,
    open_page,
    reply,
    send,
    server,
    shot,
    site,
    wait_finished,
)

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHIPS = '[data-testid="attachment-chip"]'


# A model that takes images and whose image cost follows a published rule (gpt-4o's tiles);
# every test starts its own chat.
SETUP = r"""
provider = Provider.objects.create(name="loopback", base_url=BASE_URL, api_key=API_KEY)
ChatModel.objects.create(provider=provider, name="gpt-4o", display_name="GPT-4o", accepts_images=True)
# Reads images, but no image token rule matches it: its images cannot be counted.
ChatModel.objects.create(provider=provider, name="llava-local", display_name="LLaVA", accepts_images=True)
"""


@pytest.fixture(scope="module")
def site_setup():
    return SETUP


def pick_vision_model(page) -> None:
    page.get_by_test_id("model-picker").select_option("gpt-4o")


# ---------------------------------------------------------------------------- test files


def png(width: int, height: int, rgb: tuple[int, int, int] = (31, 95, 209)) -> bytes:
    """A valid PNG of one colour, made here (no binary in the repository)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" + bytes(rgb) * width
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(row * height))
        + chunk(b"IEND", b"")
    )


def as_js(name: str, mime: str, data: bytes) -> dict:
    return {"name": name, "type": mime, "b64": base64.b64encode(data).decode()}


# Builds File objects in the page from base64 and hands them over as a user's browser would:
# a DataTransfer for a drop, a ClipboardEvent carrying one for a paste.
MAKE_FILES = """files => {
  const dt = new DataTransfer();
  for (const f of files) {
    const bytes = Uint8Array.from(atob(f.b64), (c) => c.charCodeAt(0));
    dt.items.add(new File([bytes], f.name, { type: f.type }));
  }
  return dt;
}"""


def drop(page, selector: str, *files: dict) -> None:
    page.evaluate(
        f"""([selector, files]) => {{
          const dt = ({MAKE_FILES})(files);
          const target = document.querySelector(selector);
          for (const type of ["dragenter", "dragover", "drop"]) {{
            target.dispatchEvent(new DragEvent(type, {{ dataTransfer: dt, bubbles: true, cancelable: true }}));
          }}
        }}""",
        [selector, list(files)],
    )


def paste(page, selector: str, *files: dict) -> bool:
    """Paste `files` into the element; whether the page took them (the event was cancelled)."""
    return page.evaluate(
        f"""([selector, files]) => {{
          const dt = ({MAKE_FILES})(files);
          const event = new ClipboardEvent("paste", {{ clipboardData: dt, bubbles: true, cancelable: true }});
          return !document.querySelector(selector).dispatchEvent(event);
        }}""",
        [selector, list(files)],
    )


def intercept_file_choosers(page) -> None:
    """Make sure Chromium hands the file picker to the test before anything opens it.

    Playwright turns interception on without waiting for it (fire and forget) when the first
    filechooser listener is added, so a click right after `expect_file_chooser()` can beat
    it: the picker then opens natively (and is dismissed headless) and no event comes. A
    standing listener and one round trip to the page, on the same session, settle it first."""
    page.on("filechooser", lambda _chooser: None)
    page.evaluate("0")


def attach_by_button(page, name: str, mime: str, data: bytes) -> None:
    intercept_file_choosers(page)
    with page.expect_file_chooser() as chooser:
        page.get_by_role("button", name="Attach files").click()
    chooser.value.set_files(files=[{"name": name, "mimeType": mime, "buffer": data}])


def chip(page, name: str):
    return page.locator(CHIPS).filter(has_text=name)


def wait_uploaded(page, name: str):
    found = chip(page, name)
    expect(found).to_have_attribute("data-state", "ready")
    return found


def tokens_of(found) -> int:
    text = found.get_by_test_id("attachment-meta").inner_text()
    match = re.search(r"≈ ([\d,]+) tokens?", text)
    assert match, text
    return int(match.group(1).replace(",", ""))


# ---------------------------------------------------------------------------- tests


def test_a_file_attached_by_the_paperclip_shows_its_size_and_cost_and_can_be_removed(open_page, llm, site):
    page = open_page("alice")
    notes = b"The quarterly numbers are in. Revenue grew, costs fell.\n" * 3
    # The keyboard reaches the paperclip and opens the file picker.
    button = page.get_by_role("button", name="Attach files")
    button.focus()
    expect(button).to_be_focused()
    intercept_file_choosers(page)
    with page.expect_file_chooser() as chooser:
        page.keyboard.press("Enter")
    with page.expect_response(lambda r: r.request.method == "POST" and "/attachments/" in r.url) as uploaded:
        chooser.value.set_files(files=[{"name": "notes.txt", "mimeType": "text/plain", "buffer": notes}])
    assert uploaded.value.status == 201
    info = uploaded.value.json()
    found = wait_uploaded(page, "notes.txt")
    expect(found.get_by_test_id("attachment-meta")).to_have_text(
        f"{len(notes)} B · ≈ {info['tokens']} tokens"
    )
    assert info["tokens"] and info["tokens"] > 0
    shot(page, "attachments-chip")

    # Remove: labelled with the file's name; the server forgets the upload.
    remove = found.get_by_role("button", name="Remove notes.txt")
    with page.expect_response(lambda r: r.request.method == "DELETE") as deleted:
        remove.click()
    assert deleted.value.status == 204
    expect(page.locator(CHIPS)).to_have_count(0)
    expect(page.get_by_test_id("attachment-chips")).to_be_hidden()
    expect(page.get_by_test_id("composer")).to_be_focused()
    assert page.request.get(urljoin(page.url, info["url"])).status == 404

    llm.queue(reply(["Noted."]))
    send(page, "Nothing attached after all")
    wait_finished(page)
    assert llm.requests[-1]["json"]["messages"][-1] == {
        "role": "user",
        "content": "Nothing attached after all",
    }
    expect(page.locator(USER_MESSAGES).get_by_test_id("attachments")).to_have_count(0)


def test_files_dropped_on_the_page_or_pasted_upload_as_chips(open_page):
    page = open_page("bob")
    pick_vision_model(page)
    drop(page, "#messages", as_js("data.csv", "text/csv", b"city,people\nLisbon,545000\nPorto,232000\n"))
    wait_uploaded(page, "data.csv")
    drop(page, "#composer-input", as_js("readme.md", "text/markdown", b"# Read me\n\nTwo files, one drop.\n"))
    wait_uploaded(page, "readme.md")

    # A screenshot from the clipboard, pasted into the message box.
    assert paste(page, "#composer-input", as_js("image.png", "image/png", png(40, 30)))
    shot_chip = chip(page, "Pasted image")
    expect(shot_chip).to_have_attribute("data-state", "ready")
    expect(shot_chip.locator("img.attachment-chip-preview")).to_be_visible()
    # Counted for the chat's model: for gpt-4o, 85 base tokens plus 170 per 512 px tile, and a
    # 40×30 image is one tile.
    assert tokens_of(shot_chip) == 85 + 170
    expect(page.get_by_test_id("composer")).to_have_value("")  # a file, not its name as text
    expect(page.locator(CHIPS)).to_have_count(3)
    # Text pasted stays text: the page leaves such a paste to the box.
    assert not page.evaluate(
        """() => { const dt = new DataTransfer(); dt.setData("text/plain", "hello");
        return !document.querySelector("#composer-input").dispatchEvent(
          new ClipboardEvent("paste", { clipboardData: dt, bubbles: true, cancelable: true })); }"""
    )
    expect(page.locator(CHIPS)).to_have_count(3)
    shot(page, "attachments-dropped-and-pasted")


def test_a_file_that_cannot_be_counted_says_so_and_why(open_page):
    page = open_page("erin")
    page.get_by_test_id("model-picker").select_option("llava-local")
    with page.expect_response(lambda r: r.request.method == "POST" and "/attachments/" in r.url) as uploaded:
        assert paste(page, "#composer-input", as_js("image.png", "image/png", png(40, 30)))
    assert uploaded.value.json()["tokens"] is None
    found = wait_uploaded(page, "Pasted image")
    expect(found.get_by_test_id("attachment-meta")).to_have_text(re.compile(r"· tokens not counted$"))
    uncounted = found.get_by_test_id("attachment-uncounted")
    expect(uncounted).to_have_attribute(
        "title", re.compile(r"No image token rule matches llava-local.*admin")
    )


def test_a_refused_file_says_why_and_is_not_sent(open_page, llm):
    page = open_page("carol")
    # HTML dressed as a PNG: the server refuses it, in words, and the chip shows them.
    attach_by_button(page, "cat.png", "image/png", b"<html><script>alert(1)</script></html>")
    refused = chip(page, "cat.png")
    expect(refused).to_have_attribute("data-state", "refused")
    error = refused.get_by_test_id("attachment-error")
    expect(error).to_be_visible()
    assert len(error.inner_text()) > 10 and "HTTP" not in error.inner_text()
    expect(refused.get_by_role("button", name="Remove cat.png")).to_be_visible()
    shot(page, "attachments-refused")

    llm.queue(reply(["Just text, then."]))
    send(page, "Here is the cat")
    wait_finished(page)
    assert llm.requests[-1]["json"]["messages"][-1] == {"role": "user", "content": "Here is the cat"}
    expect(page.locator(CHIPS)).to_have_count(0)  # it went with nothing, and is gone from the box
    expect(page.locator(USER_MESSAGES).get_by_test_id("attachments")).to_have_count(0)


def test_send_waits_for_an_upload_still_running(open_page, llm):
    page = open_page("dana")
    held = []
    page.route("**/attachments/", lambda route: held.append(route))  # answered when the test says
    attach_by_button(page, "log.txt", "text/plain", b"12:00 started\n12:01 failed: disk full\n")
    expect(chip(page, "log.txt")).to_have_attribute("data-state", "uploading")
    expect(chip(page, "log.txt").get_by_test_id("attachment-meta")).to_contain_text("uploading")
    send(page, "Why did it fail?")
    expect(page.get_by_test_id("attachment-status")).to_contain_text(
        "will be sent once the file has uploaded"
    )
    expect(page.locator(USER_MESSAGES)).to_have_count(0)  # not sent without the file
    expect(page.get_by_test_id("composer")).to_have_value("Why did it fail?")

    llm.queue(reply(["The disk was full."]))
    page.wait_for_function(
        "n => document.querySelectorAll('[data-testid=attachment-chip]').length === n", arg=1
    )
    assert len(held) == 1
    held[0].continue_()
    wait_finished(page)
    expect(page.get_by_test_id("attachment-status")).to_be_hidden()
    sent = llm.requests[-1]["json"]["messages"][-1]
    assert "disk full" in str(sent["content"]) and "Why did it fail?" in str(sent["content"])
    expect(page.locator(USER_MESSAGES).last.get_by_test_id("attachment-file")).to_have_text(
        re.compile("log.txt")
    )


SCORES = "scores-of-the-spring-term-for-every-class-in-the-school.csv"  # long: it must still fit a phone


def test_a_message_with_an_image_and_a_file_reaches_the_model_and_shows_them_after_a_reload(open_page, llm):
    page = open_page("erin")
    pick_vision_model(page)
    image = png(64, 48, (200, 60, 40))
    table = b"name,score\nada,10\ngrace,9\n"
    attach_by_button(page, "chart.png", "image/png", image)
    drop(page, "#composer", as_js(SCORES, "text/csv", table))
    wait_uploaded(page, "chart.png")
    wait_uploaded(page, SCORES)

    llm.queue(reply(["A red chart and two scores."]))
    send(page, "What do these show?")
    expect(body(last_reply(page))).to_have_text("A red chart and two scores.")
    wait_finished(page)
    expect(page.locator(CHIPS)).to_have_count(0)  # the composer is empty again

    # The model received the text, the file's content and the image as a data URL.
    sent = llm.requests[-1]["json"]["messages"][-1]
    assert sent["role"] == "user" and isinstance(sent["content"], list)
    texts = " ".join(p["text"] for p in sent["content"] if p["type"] == "text")
    assert "What do these show?" in texts and f'<file name="{SCORES}">' in texts and "grace,9" in texts
    images = [p["image_url"]["url"] for p in sent["content"] if p["type"] == "image_url"]
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
    # Re-encoded by the server (without metadata), so compared as pixels, not bytes.
    received = Image.open(io.BytesIO(base64.b64decode(images[0].split(",", 1)[1])))
    assert received.size == (64, 48) and received.convert("RGB").getpixel((10, 10)) == (200, 60, 40)

    def check_shown(page):
        message = page.locator(USER_MESSAGES).last
        thumb = message.get_by_test_id("attachment-thumb")
        expect(thumb.locator("img")).to_have_attribute("alt", "chart.png")
        page.wait_for_function(
            "() => { const i = document.querySelector('[data-testid=attachment-thumb] img');"
            " return i && i.complete && i.naturalWidth === 64; }"
        )
        file = message.get_by_test_id("attachment-file")
        expect(file).to_have_text(re.compile(re.escape(SCORES)))
        return message, thumb, file

    check_shown(page)
    shot(page, "attachments-sent")
    page.reload()
    message, thumb, file = check_shown(page)
    shot(page, "attachments-after-reload")

    # The thumbnail opens the image; the file chip downloads the file as it was.
    with page.expect_popup() as popup:
        thumb.click()
    opened = popup.value
    opened.wait_for_load_state()
    assert opened.evaluate("document.contentType") == "image/png"
    opened.close()
    with page.expect_download() as download:
        file.click()
    assert download.value.suggested_filename == SCORES
    assert open(download.value.path(), "rb").read() == table

    phone = open_page("erin", urlparse(page.url).path, viewport={"width": 390, "height": 844})
    for shown in check_shown(phone)[1:]:
        box = shown.bounding_box()
        assert box["x"] >= 0 and box["x"] + box["width"] <= 390
    shot(phone, "attachments-phone")


def test_the_chips_read_well_in_the_dark_theme(open_page):
    page = open_page("frank", color_scheme="dark")
    attach_by_button(page, "diagram.png", "image/png", png(20, 20))
    attach_by_button(page, "fake.png", "image/png", b"not an image at all")
    wait_uploaded(page, "diagram.png")
    expect(chip(page, "fake.png")).to_have_attribute("data-state", "refused")
    shot(page, "attachments-dark")
    assert contrast(chip(page, "diagram.png")) >= 4.5
    assert contrast(chip(page, "fake.png")) >= 4.5


def test_an_image_refused_by_the_model_comes_back_to_the_composer_with_the_message(open_page, llm):
    page = open_page("gina")  # the site's default model does not take images
    attach_by_button(page, "photo.png", "image/png", png(32, 32))
    wait_uploaded(page, "photo.png")
    send(page, "What is in this photo?")
    toast = page.get_by_test_id("toast")
    expect(toast).to_contain_text("image")
    # Nothing the user gave is lost: the words are back in the box, the file back on its chip.
    expect(page.locator(USER_MESSAGES)).to_have_count(0)
    expect(page.get_by_test_id("composer")).to_have_value("What is in this photo?")
    expect(chip(page, "photo.png")).to_have_attribute("data-state", "ready")
    requests_before = len(llm.requests)

    # With a model that takes images, the same upload goes.
    pick_vision_model(page)
    expect(page.get_by_test_id("toast")).to_contain_text("GPT-4o answers from the next reply")
    llm.queue(reply(["A blue square."]))
    page.get_by_test_id("send").click()
    expect(body(last_reply(page))).to_have_text("A blue square.")
    wait_finished(page)
    assert len(llm.requests) == requests_before + 1
    sent = llm.requests[-1]["json"]
    assert sent["model"] == "gpt-4o"
    assert [p["type"] for p in sent["messages"][-1]["content"]] == ["text", "image_url"]


def test_editing_a_message_keeps_its_files_and_a_file_can_be_taken_off(open_page, llm):
    page = open_page("hank")
    attach_by_button(page, "plan.txt", "text/plain", b"Step one. Step two.\n")
    wait_uploaded(page, "plan.txt")
    attach_by_button(page, "notes.txt", "text/plain", b"Old notes.\n")
    wait_uploaded(page, "notes.txt")
    llm.queue(reply(["Two steps."]))
    send(page, "Summarise")
    wait_finished(page)
    message = page.locator(USER_MESSAGES).last
    message.get_by_test_id("edit").click()
    # The editor shows the files the new version keeps, each with its own Remove button.
    kept = message.get_by_test_id("edit-file")
    expect(kept).to_have_count(2)
    expect(message.get_by_test_id("attachments")).to_be_hidden()  # shown once: as the editor's chips
    expect(kept.first).to_contain_text("plan.txt")
    expect(message.get_by_test_id("edit-hint")).not_to_contain_text("earlier version only")
    message.get_by_role("button", name="Remove notes.txt").click()
    expect(kept).to_have_count(1)
    expect(message.get_by_test_id("edit-input")).to_be_focused()
    llm.queue(reply(["Still two steps."]))
    message.get_by_test_id("edit-input").fill("Summarise briefly")
    message.get_by_test_id("edit-save").click()
    wait_finished(page)
    assert llm.requests[-1]["json"]["messages"] == [
        {
            "role": "user",
            "content": 'Summarise briefly\n\n<file name="plan.txt">\nStep one. Step two.\n\n</file>',
        }
    ]
    edited = page.locator(USER_MESSAGES).last
    expect(edited.get_by_test_id("attachment-file")).to_have_count(1)
    expect(edited.get_by_test_id("attachment-file")).to_contain_text("plan.txt")
    # After a reload too, and the kept file downloads from the new version.
    page.reload()
    edited = page.locator(USER_MESSAGES).last
    expect(edited.locator("[data-body]")).to_have_text("Summarise briefly")
    link = edited.get_by_test_id("attachment-file")
    expect(link).to_have_count(1)
    assert page.request.get(urljoin(page.url, link.get_attribute("href"))).text() == "Step one. Step two.\n"
    # Editing it again offers the kept file, drawn from the server's page this time.
    edited.get_by_test_id("edit").click()
    expect(edited.get_by_test_id("edit-file")).to_have_count(1)
    shot(page, "attachments-edit")


def test_another_tab_on_the_chat_shows_the_files_as_the_message_arrives(open_page, llm):
    page = open_page("ivan")
    llm.queue(reply(["Hello."]))
    send(page, "Hi")
    wait_finished(page)
    other = open_page("ivan", urlparse(page.url).path)
    expect(other.locator(USER_MESSAGES)).to_have_count(1)

    drop(page, "#composer", as_js("minutes.md", "text/markdown", b"# Minutes\n\nNothing decided.\n"))
    wait_uploaded(page, "minutes.md")
    llm.queue(reply(["Nothing was decided."]))
    send(page, "")  # files alone
    wait_finished(page)
    for tab in (page, other):
        message = tab.locator(USER_MESSAGES).last
        expect(message.get_by_test_id("attachment-file")).to_have_text(re.compile(r"minutes\.md"))
        expect(message.locator("[data-body]")).to_be_hidden()  # no empty bubble
    assert llm.requests[-1]["json"]["messages"][-1]["content"].startswith('<file name="minutes.md">')
