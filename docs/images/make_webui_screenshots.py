"""Regenerates the chat page screenshots in this folder (light, dark, phone width) from a real server and the real
default model: `python docs/images/make_webui_screenshots.py` (needs chromium and Playwright, as the browser tests)."""

import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "server"))

from live_server import API_KEY, LiveServer  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from deeproots.store import DEFAULT_MODEL, ModelStore  # noqa: E402

HERE = Path(__file__).parent
LAUNCH_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
               "--disable-component-update", "--no-first-run"]
PROMPTS = ["What is a GGUF file?", "Write a Python function that reverses a string."]


def chat(page, prompt: str) -> None:
    page.fill("#prompt", prompt)
    page.press("#prompt", "Enter")
    page.wait_for_selector("body:not([data-busy])", timeout=120_000)


def main() -> None:
    model_path = ModelStore().pull(DEFAULT_MODEL, quiet=True).path
    os.environ["DEEPROOTS_HOME"] = tempfile.mkdtemp()  # a fresh conversations.db, not the user's
    server = LiveServer(model_path)
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=LAUNCH_ARGS)
            storage = {"cookies": [], "origins": [
                {"origin": server.url, "localStorage": [{"name": "deeproots.apiKey", "value": API_KEY}]}]}
            page = browser.new_context(storage_state=storage, viewport={"width": 1200, "height": 760},
                                       color_scheme="light").new_page()
            page.goto(server.url + "/")
            page.wait_for_selector("body[data-ready=true]")
            page.click("#settings-toggle")
            page.fill("#temperature", "0")
            page.fill("#max-tokens", "160")
            page.dispatch_event("#max-tokens", "change")
            page.click("#settings-toggle")
            for prompt in PROMPTS:
                page.click("#new-chat")
                chat(page, prompt)
            page.screenshot(path=HERE / "webui-light.png")
            page.click("#theme")
            page.screenshot(path=HERE / "webui-dark.png")
            phone = browser.new_context(storage_state=storage, viewport={"width": 390, "height": 780},
                                        device_scale_factor=2, color_scheme="light").new_page()
            phone.goto(page.url)
            phone.wait_for_selector(".message.assistant")
            phone.screenshot(path=HERE / "webui-phone.png")
            browser.close()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
