"""The chat page in a real browser (Debian's chromium through Playwright for Python, never a downloaded one), on a
real server with the real default model: streaming, stop, regenerate, branches, reload, a second browser, export
and import, hostile text, keyboard-only use, themes and a phone-width layout, the model picker. Plus
`serve --open`."""

import json
import os
import shutil
import stat
import sys
import time

import httpx
import pytest
from live_server import API_KEY, LiveServer

pytestmark = pytest.mark.slow  # a real server and a real browser

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]
STREAMING = ".message.streaming .body"
MARKER = "XSS-MARKER"
HOSTILE = [  # each tries to run script; the page must show every one as text
    f"<script>window.__xss = 'script'</script>{MARKER}",
    "<img src=x onerror=\"window.__xss = 'img'\">",
    "[click me](javascript:window.__xss='link')",
    "```html\n</code></pre><script>window.__xss = 'fence'</script>\n```",
    "**<svg onload=\"window.__xss = 'svg'\">**",
]


def browser_or_skip():
    playwright = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed "
                                                                   "(pip install playwright)")
    if not os.path.exists(CHROMIUM):
        pytest.skip("no chromium executable (Debian: apt-get install -y chromium)")
    return playwright


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    return tmp_path_factory.mktemp("home")


@pytest.fixture(scope="module")
def browser():
    manager = browser_or_skip().sync_playwright().start()
    browser = manager.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
    yield browser
    browser.close()
    manager.stop()


@pytest.fixture(scope="module")
def server(smollm2_path, home, browser):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPROOTS_HOME", str(home))
        server = LiveServer(smollm2_path, "--parallel", "2")
    yield server
    server.stop()


def new_page(browser, server, *, with_key=True, **options):
    """A fresh browser profile (its own localStorage), optionally already holding the API key."""
    origin = {"origin": server.url, "localStorage": [{"name": "deeproots.apiKey", "value": API_KEY}]}
    context = browser.new_context(storage_state={"cookies": [], "origins": [origin] if with_key else []},
                                  accept_downloads=True, **options)
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    return page


def open_page(page, server, query: str = "") -> None:
    page.goto(server.url + "/" + query)
    page.wait_for_selector("body[data-ready=true]")


def set_settings(page, *, temperature: float, max_tokens: int) -> None:
    page.click("#settings-toggle")
    page.fill("#temperature", str(temperature))
    page.fill("#max-tokens", str(max_tokens))
    page.dispatch_event("#max-tokens", "change")
    page.click("#settings-toggle")


def wait_idle(page) -> None:
    """Until the page has stored the answer (it marks body[data-busy] from the key press until then)."""
    page.wait_for_selector("body:not([data-busy])", timeout=120_000)
    assert page.is_hidden("#stop") and page.is_hidden("#error"), page.text_content("#error")


def record_streaming(page) -> None:
    """Keeps every text the streaming answer shows, in window.__seen (read back by seen_states)."""
    page.evaluate("""() => {
        window.__seen = [];
        new MutationObserver(() => {
            const body = document.querySelector('.message.streaming .body');
            if (body && body.textContent !== window.__seen.at(-1)) window.__seen.push(body.textContent);
        }).observe(document.getElementById('messages'), {childList: true, subtree: true, characterData: true});
    }""")


def conversation(server, conversation_id: str) -> dict:
    response = httpx.get(f"{server.url}/api/conversations/{conversation_id}", headers=server.headers)
    assert response.status_code == 200, response.text
    return response.json()


def current_id(page) -> str:
    return page.evaluate("() => new URLSearchParams(location.search).get('c')")


def shown_path(server, conversation_id: str) -> list[dict]:
    stored = conversation(server, conversation_id)
    by_id = {message["id"]: message for message in stored["messages"]}
    path, leaf = [], stored["current_leaf"]
    while leaf:
        path.insert(0, by_id[leaf])
        leaf = by_id[leaf]["parent_id"]
    return path


def test_key_asked_once_answer_streams_is_stored_and_found_again(browser, server):
    page = new_page(browser, server, with_key=False)
    page.goto(server.url + "/")
    page.wait_for_selector("#key-dialog[open]")
    page.fill("#key-input", API_KEY)
    page.press("#key-input", "Enter")
    page.wait_for_selector("body[data-ready=true]")
    header = page.text_content("#model-info")
    assert all(part in header for part in ("SmolLM2-135M-Instruct", "llama", "Q4_1", "1024 tokens context"))
    # A long answer: it streams over many animation frames (the page repaints once a frame), however fast the machine.
    prompt = "Tell me a long story about a dragon who learns to fly."
    set_settings(page, temperature=0, max_tokens=160)

    record_streaming(page)
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    wait_idle(page)
    seen = page.evaluate("() => window.__seen")
    stored = shown_path(server, current_id(page))
    assert [m["role"] for m in stored] == ["user", "assistant"]
    answer = stored[1]["content"]
    shown = page.text_content(".message.assistant .body")
    # the answer arrived piece by piece: growing prefixes of the final text
    assert len(seen) > 3 and all(shown.startswith(text.strip()) for text in seen if text)
    direct = httpx.post(server.url + "/v1/chat/completions", headers=server.headers, timeout=120, json={
        "model": "SmolLM2-135M-Instruct.Q4_1", "temperature": 0, "max_tokens": 160, "top_p": 0.95,
        "messages": [{"role": "user", "content": prompt}]}).json()
    assert answer == direct["choices"][0]["message"]["content"]
    meta = stored[1]["meta"]
    assert meta["stopped"] is False and meta["ttft_ms"] > 0 and meta["prompt_tokens"] > 0
    assert "first token" in page.text_content(".message.assistant .stats")

    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.is_hidden("#key-dialog")  # asked once: this browser kept the key
    assert page.text_content(".message.user .body") == prompt
    second = new_page(browser, server)  # another browser profile finds it in the list
    open_page(second, server)
    second.click(f"#conversations li[data-id='{current_id(page)}'] .open")
    second.wait_for_selector(".message.assistant")
    assert second.text_content(".message.user .body") == prompt
    assert not page.errors and not second.errors


def start_long_answer(browser, server, prompt: str, shown_chars: int):
    """A fresh page that sent `prompt` and is streaming its (long, sampled) answer, `shown_chars` of it shown."""
    page = new_page(browser, server)
    open_page(page, server)
    set_settings(page, temperature=0.8, max_tokens=600)
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    wait_streaming(page, shown_chars)
    return page


def wait_streaming(page, shown_chars: int) -> None:
    """Until the streaming answer shows more than `shown_chars` characters."""
    page.wait_for_function(f"() => document.querySelector('{STREAMING}')?.textContent.length > {shown_chars}")


def test_escape_stops_mid_stream_and_keeps_what_arrived(browser, server):
    page = start_long_answer(browser, server, "Write a very long story about a dragon who learns to cook.", 40)
    page.keyboard.press("Escape")
    wait_idle(page)
    answer = shown_path(server, current_id(page))[-1]
    assert answer["role"] == "assistant" and answer["meta"]["stopped"] is True
    assert 40 <= len(answer["content"]) and "stopped" in page.text_content(".message.assistant .stats")
    deadline = time.time() + 60  # a hang guard: the server cancels the sequence when the page hangs up
    while server.metric("deeproots_running_sequences") != 0:
        assert time.time() < deadline, "the stopped sequence kept running"
        time.sleep(0.1)


def test_opening_another_conversation_mid_stream_keeps_the_answer_in_its_own(browser, server):
    other = httpx.post(server.url + "/api/conversations/import", headers=server.headers, json={
        "format": "deeproots.conversation", "version": 1, "title": "elsewhere",
        "messages": [{"id": "1", "role": "user", "content": "an older question"}]}).json()
    page = start_long_answer(browser, server, "Write a very long poem about the sea.", 20)
    streaming_in = current_id(page)
    page.click(f"#conversations li[data-id='{other['id']}'] .open")
    wait_idle(page)
    page.wait_for_selector(".message.user >> text='an older question'")
    assert current_id(page) == other["id"] and page.locator(".message").count() == 1
    answer = shown_path(server, streaming_in)[-1]
    assert answer["role"] == "assistant" and answer["meta"]["stopped"] is True and len(answer["content"]) >= 20
    assert [m["role"] for m in conversation(server, other["id"])["messages"]] == ["user"]

def test_stop_button_regenerate_and_edit_make_branches(browser, server):
    page = new_page(browser, server)
    open_page(page, server)
    set_settings(page, temperature=1.0, max_tokens=16)
    page.fill("#prompt", "Name a colour.")
    page.click("#send")
    wait_idle(page)
    conversation_id = current_id(page)
    first = shown_path(server, conversation_id)[-1]

    page.click(".message.assistant .regenerate")
    wait_idle(page)
    regenerated = shown_path(server, conversation_id)
    assert regenerated[-1]["id"] != first["id"] and regenerated[-1]["parent_id"] == first["parent_id"]
    assert page.text_content(".message.assistant .branch-count").strip() == "2/2"
    page.click(".message.assistant .previous-branch")
    page.wait_for_selector(".message.assistant .branch-count >> text='1/2'")
    assert conversation(server, conversation_id)["current_leaf"] == first["id"]

    page.click(".message.user .edit-message")
    edited = "Write a very long story about a fruit."  # long, so the answer is still streaming when Stop is pressed
    page.fill(".message.user .edit textarea", edited)
    set_settings(page, temperature=0.8, max_tokens=600)
    page.click(".message.user .save-edit")
    wait_streaming(page, 20)
    page.click("#stop")
    wait_idle(page)
    path = shown_path(server, conversation_id)
    assert [m["content"] for m in path][:1] == [edited] and path[-1]["meta"]["stopped"] is True
    assert page.text_content(".message.user .branch-count").strip() == "2/2"
    assert len(conversation(server, conversation_id)["messages"]) == 5  # 2 questions, 3 answers
    assert not page.errors


def test_export_then_import_in_the_page(browser, server, tmp_path):
    page = new_page(browser, server)
    open_page(page, server)
    set_settings(page, temperature=0, max_tokens=12)
    page.fill("#prompt", "Say hello.")
    page.press("#prompt", "Enter")
    wait_idle(page)
    original = current_id(page)
    with page.expect_download() as download:
        page.click("#export")
    saved = tmp_path / "export.json"
    download.value.save_as(saved)
    document = json.loads(saved.read_text())
    assert document["format"] == "deeproots.conversation" and len(document["messages"]) == 2

    page.set_input_files("#import-file", str(saved))
    page.wait_for_function(f"() => new URLSearchParams(location.search).get('c') !== '{original}'")
    imported = current_id(page)
    assert [m["content"] for m in shown_path(server, imported)] == [m["content"] for m in document["messages"]]
    assert page.locator("#conversations li").count() >= 2

    page.set_input_files("#import-file", files=[{"name": "bad.json", "mimeType": "application/json",
                                                  "buffer": b'{"format": "deeproots.conversation"}'}])
    page.wait_for_selector("#error:not([hidden])")
    assert "version" in page.text_content("#error") or "title" in page.text_content("#error")


def test_hostile_text_is_shown_as_text_and_never_runs(browser, server):
    document = {"format": "deeproots.conversation", "version": 1, "title": "<img src=x onerror=window.__xss=1>",
                "messages": []}
    for index, text in enumerate(HOSTILE):
        document["messages"].append({"id": f"u{index}", "parent_id": f"a{index - 1}" if index else None,
                                     "role": "user", "content": text})
        document["messages"].append({"id": f"a{index}", "parent_id": f"u{index}", "role": "assistant",
                                     "content": text})
    created = httpx.post(server.url + "/api/conversations/import", json=document, headers=server.headers).json()
    page = new_page(browser, server)
    open_page(page, server, f"?c={created['id']}")
    page.wait_for_selector(".message.assistant")
    page.hover("text=click me")
    page.click("text=click me")
    time.sleep(0.5)  # give any injected handler the chance to run
    assert page.evaluate("() => window.__xss") is None
    assert page.locator("#messages script, #messages img, #messages svg, #conversations img").count() == 0
    assert page.locator("#messages a").count() == 0  # javascript: links stay text
    users = page.locator(".message.user .body").all_text_contents()
    assert users == HOSTILE  # the user's text exactly as typed
    answers = page.text_content("#messages")
    assert f"<script>window.__xss = 'script'</script>{MARKER}" in answers
    assert "</code></pre><script>window.__xss = 'fence'</script>" in answers
    assert page.text_content(f"#conversations li[data-id='{created['id']}'] .open") == document["title"]
    assert not page.errors


RICH = """<think>The user wants a table.</think>Here is **bold**, *italic*, `code` and [a link](https://example.org/x).

| name | value |
|------|------:|
| a    | 1     |

```python
def f(x):  # doubles
    return x * 2
```

1. one
2. two
"""


def test_markdown_tables_code_with_copy_links_and_reasoning(browser, server):
    document = {"format": "deeproots.conversation", "version": 1, "title": "rich", "messages": [
        {"id": "q", "role": "user", "content": "show me"},
        {"id": "a", "parent_id": "q", "role": "assistant", "content": RICH}]}
    created = httpx.post(server.url + "/api/conversations/import", json=document, headers=server.headers).json()
    page = new_page(browser, server)
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    open_page(page, server, f"?c={created['id']}")
    answer = page.locator(".message.assistant .body")
    reasoning = answer.locator("details.reasoning")
    assert reasoning.get_attribute("open") is None and "The user wants a table." in reasoning.text_content()
    assert answer.locator("strong").text_content() == "bold" and answer.locator("em").text_content() == "italic"
    link = answer.locator("a")
    assert link.get_attribute("href") == "https://example.org/x" and "noopener" in link.get_attribute("rel")
    assert answer.locator("th").all_text_contents() == ["name", "value"]
    assert answer.locator("td").all_text_contents() == ["a", "1"]
    assert answer.locator("ol li").all_text_contents() == ["one", "two"]
    code = "def f(x):  # doubles\n    return x * 2"
    assert answer.locator(".code-block pre").text_content() == code
    assert answer.locator(".code-block .tok-keyword").all_text_contents() == ["def", "return"]
    assert answer.locator(".code-block .tok-comment").all_text_contents() == ["# doubles"]
    answer.locator(".copy-code").click()
    page.wait_for_selector(".copy-code >> text='Copied'")
    assert page.evaluate("() => navigator.clipboard.readText()") == code
    assert not page.errors

def test_keyboard_only_newline_send_rename_and_search(browser, server):
    page = new_page(browser, server)
    open_page(page, server)
    set_settings(page, temperature=0, max_tokens=8)
    page.focus("#prompt")  # where the page puts focus on load
    assert page.evaluate("() => document.activeElement.id") == "prompt"
    page.keyboard.type("first line")
    page.keyboard.press("Shift+Enter")
    page.keyboard.type("second line")
    page.keyboard.press("Enter")
    wait_idle(page)
    assert page.text_content(".message.user .body") == "first line\nsecond line"
    assert page.input_value("#prompt") == ""

    conversation_id = current_id(page)
    page.click("#new-chat")
    page.focus("#search")
    page.keyboard.type("second line")  # matches the message text
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 1")
    page.keyboard.press("Tab")  # into the list: the conversation
    page.keyboard.press("Enter")
    page.wait_for_selector(".message.user")
    assert current_id(page) == conversation_id
    page.keyboard.press("Tab")  # its rename button
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("Renamed by keyboard")
    page.keyboard.press("Enter")
    page.wait_for_selector("#conversations .open >> text='Renamed by keyboard'")
    assert conversation(server, conversation_id)["title"] == "Renamed by keyboard"
    assert page.text_content("#title") == "Renamed by keyboard"

    page.focus(f"#conversations li[data-id='{conversation_id}'] .delete")
    page.keyboard.press("Enter")
    page.keyboard.press("Enter")  # the second press confirms
    page.wait_for_function("() => document.querySelectorAll('#conversations li').length === 0")
    assert httpx.get(f"{server.url}/api/conversations/{conversation_id}", headers=server.headers).status_code == 404


def test_dark_theme_is_kept_and_the_phone_layout_fits(browser, server):
    page = new_page(browser, server, color_scheme="light")
    open_page(page, server)
    background = "() => getComputedStyle(document.body).backgroundColor"
    light = page.evaluate(background)
    page.click("#theme")
    dark = page.evaluate(background)
    assert light != dark and page.evaluate("() => document.documentElement.dataset.theme") == "dark"
    page.reload()
    page.wait_for_selector("body[data-ready=true]")
    assert page.evaluate(background) == dark

    phone = new_page(browser, server, viewport={"width": 390, "height": 800})
    open_page(phone, server)
    assert phone.evaluate("() => document.documentElement.scrollWidth") <= 390
    assert phone.evaluate("() => document.getElementById('sidebar').getBoundingClientRect().right") <= 0
    phone.click("#open-sidebar")
    phone.wait_for_function("() => document.getElementById('sidebar').getBoundingClientRect().left >= 0")
    phone.click("#close-sidebar")
    composer = phone.evaluate("() => document.getElementById('send').getBoundingClientRect().right")
    assert composer <= 390


def test_the_model_picker_chats_with_the_model_chosen(browser, home, smollm2_path, gemma3_path):
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPROOTS_HOME", str(home))  # an empty store: the two -m models are all it serves
        server = LiveServer(smollm2_path, "-m", str(gemma3_path), "--parallel", "2")
    try:
        page = new_page(browser, server)
        open_page(page, server)
        smollm2, gemma = smollm2_path.stem, gemma3_path.stem
        offered = page.eval_on_selector_all("#model-picker option", "options => options.map((o) => o.value)")
        assert offered == [smollm2, gemma]  # the default first
        page.select_option("#model-picker", gemma)
        page.wait_for_function("() => document.getElementById('model-info').textContent.includes('gemma3')")
        set_settings(page, temperature=0, max_tokens=8)
        page.fill("#prompt", "Hello")
        page.press("#prompt", "Enter")
        wait_idle(page)
        assert server.metric("deeproots_generation_tokens_total", gemma) > 0
        assert server.metric("deeproots_generation_tokens_total", smollm2) == 0
        assert not page.errors
    finally:
        server.stop()


def test_serve_open_starts_the_default_browser_on_the_page(smollm2_path, tmp_path):
    opened = tmp_path / "opened"
    fake_browser = tmp_path / "browser.py"  # webbrowser runs $BROWSER with the address
    fake_browser.write_text(f"#!{sys.executable}\nimport sys, pathlib\npathlib.Path({str(opened)!r})"
                            f".write_text(sys.argv[1])\n")
    fake_browser.chmod(fake_browser.stat().st_mode | stat.S_IEXEC)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEEPROOTS_HOME", str(tmp_path))
        patch.setenv("BROWSER", str(fake_browser) + " %s")
        server = LiveServer(smollm2_path, "--open", api_key=None)
    try:
        deadline = time.time() + 20
        while not opened.exists():
            assert time.time() < deadline, "no browser was started"
            time.sleep(0.1)
        assert opened.read_text() == server.url + "/"
    finally:
        server.stop()
