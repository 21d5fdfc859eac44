"""The chat page in a real browser: Debian's headless Chromium, driven through its chromedriver.

Nothing lost and nothing doubled, seen from the client: two pages in one room
keep chatting across a restart of the app (both Daphne processes), and a message
typed while the app is down is delivered once, and stored once, after the pages
reconnect by themselves. Against the session's native stack (tests/conftest.py).

On failure each browser's screenshot, console log and DOM are saved under
results/browser/ (the path is printed). Every browser and chromedriver is quit,
pass or fail.
"""

import re
import tempfile
import uuid
from pathlib import Path

import pytest
from headless_chromium import ARTIFACTS, quit_chromium, save_evidence, start_chromium
from selenium import webdriver
from selenium.common.exceptions import TimeoutException, WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import WebDriverWait

# The page's reconnect delay is at most 10 s (full jitter); the app restarts within a few.
TIMEOUT_S = 30

# Every message of the log as the test sees it, read in one go (no stale elements).
READ_LOG = """
return [...document.querySelectorAll("#log .message")].map((m) => ({
  id: m.dataset.id ? Number(m.dataset.id) : null,
  client_id: m.dataset.clientId || null,
  pending: m.classList.contains("pending"),
  author: m.querySelector(".author")?.textContent ?? null,
  text: m.querySelector(".text")?.textContent ?? null,
}));
"""


class Page:
    """One browser session on the chat page."""

    def __init__(self, label: str, driver: webdriver.Chrome, profile: Path):
        self.label, self.driver, self.profile = label, driver, profile

    def wait(self, condition, what: str, timeout: float = TIMEOUT_S):
        """Poll ``condition(self)`` until it is truthy; fail naming ``what`` and the page's state."""
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(lambda _: condition(self))
        except TimeoutException:
            pytest.fail(f"{self.label}: not {what} after {timeout}s; state: {self.state_text()!r}")

    def open(self, url: str) -> None:
        self.driver.get(url)

    def state(self) -> str:
        return self.driver.find_element(By.ID, "state").get_attribute("data-state")

    def state_text(self) -> str:
        try:
            return self.driver.find_element(By.ID, "state").text
        except WebDriverException as error:
            return f"(unreadable: {error.msg})"

    def connects(self) -> int:
        """How many times the page got `ready` since it loaded."""
        return int(self.driver.find_element(By.ID, "state").get_attribute("data-connects"))

    def synced(self) -> bool:
        """Connected, and the history asked for after `ready` is merged into the log."""
        log = self.driver.find_element(By.ID, "log")
        return self.state() == "connected" and log.get_attribute("data-synced") == "true"

    def wait_synced(self) -> None:
        self.wait(Page.synced, "connected with its history merged")

    def rename(self, name: str) -> None:
        """Type a display name; the page reconnects under it when the field changes."""
        field = self.driver.find_element(By.ID, "name")
        field.clear()
        field.send_keys(name, Keys.TAB)
        self.wait(lambda page: page.synced() and page.state_text().endswith(f" as {name}"), f"renamed {name}")

    def send(self, text: str) -> None:
        self.driver.find_element(By.ID, "text").send_keys(text, Keys.ENTER)

    def messages(self) -> list[dict]:
        return self.driver.execute_script(READ_LOG)

    def with_text(self, text: str) -> list[dict]:
        return [m for m in self.messages() if m["text"] == text]

    def wait_delivered(self, text: str) -> dict:
        """Wait until ``text`` is a stored message (an id, not pending) and the page is synced;
        then it must be there exactly once. Returns it."""

        def settled(page):
            shown = page.with_text(text)
            return page.synced() and shown and not any(m["pending"] for m in shown)

        self.wait(settled, f"showing {text!r} as delivered")
        shown = self.with_text(text)
        assert len(shown) == 1, f"{self.label} shows {text!r} {len(shown)} times: {shown}"
        assert shown[0]["id"] is not None
        return shown[0]

    def save_evidence(self, stem: str) -> list[Path]:
        """Screenshot, console log and DOM of this page, as files named after the test."""
        return save_evidence(self.driver, ARTIFACTS / f"{stem}-{self.label}")

    def quit(self) -> None:
        quit_chromium(self.driver, self.profile)


@pytest.fixture
def browsers(request, stack, chromium, failed_so_far):
    """Opens pages: ``browsers(label, name, room)``; on failure saves their evidence; quits them all."""
    pages: list[Page] = []
    profiles = tempfile.TemporaryDirectory(prefix="chat-browser-", ignore_cleanup_errors=True)

    def open_page(label: str, name: str, room: str | None) -> Page:
        profile = Path(profiles.name, label)
        page = Page(label, start_chromium(profile), profile)
        pages.append(page)
        page.open(stack.app_url + "/" + (f"#{room}" if room else ""))
        page.wait_synced()
        if name:
            page.rename(name)
        return page

    try:
        yield open_page
    finally:
        try:
            if failed_so_far() and pages:
                stem = request.node.name.replace("/", "_")
                saved = [path for page in pages for path in page.save_evidence(stem)]
                print(f"\nbrowser evidence of {request.node.nodeid}:", *saved, sep="\n  ")
        finally:
            for page in pages:
                try:
                    page.quit()
                except WebDriverException as error:
                    print(f"{page.label}: quit failed: {error}")
            profiles.cleanup()


def rows_with_client_id(owner_db, room: str, client_id: str) -> list[tuple]:
    return owner_db.execute(
        "SELECT m.id, m.text FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s AND m.client_id = %s",
        [room, client_id],
    ).fetchall()


def unique(text: str) -> str:
    return f"{text} {uuid.uuid4().hex[:8]}"


def test_a_fresh_page_opens_on_a_room_and_connects(browsers):
    page = browsers("fresh", "", None)  # what a new user opens: no room in the address
    assert page.state() == "connected"
    selected = page.driver.find_element(By.ID, "rooms").get_attribute("value")
    assert selected == "lobby"  # created by migration 0003
    assert page.driver.execute_script("return location.hash") == "#lobby"
    assert page.state_text() == "connected to lobby as guest"


def test_the_page_runs_under_its_content_security_policy(browsers, room):
    """The page's policy (app/chat/csp.py) lets its own nonce'd script and style run and its
    WebSocket connect (connect-src 'self' covers ws: and wss: to the same host), and
    blocks an inline script that lacks the nonce: the browser says so in its console."""
    page = browsers("csp", "", room)  # connected and synced: the script ran, the socket opened
    assert page.driver.execute_script("return getComputedStyle(document.body).maxWidth") != "none"
    assert _csp_violations(page) == []
    page.driver.execute_script(
        "const s = document.createElement('script');"
        "s.textContent = 'window.injected = true';"
        "document.body.appendChild(s);"
    )
    assert page.driver.execute_script("return window.injected === undefined")
    violations = _csp_violations(page)
    assert violations and all("script-src" in message for message in violations), violations


def _csp_violations(page) -> list[str]:
    """The console's Content Security Policy messages since the last call (reading drains them)."""
    return [
        entry["message"]
        for entry in page.driver.get_log("browser")
        if "Content Security Policy" in entry["message"]
    ]


def test_a_message_typed_in_one_page_appears_once_in_the_other(browsers, room):
    alice = browsers("alice", "alice", room)
    bob = browsers("bob", "bob", room)
    assert bob.driver.find_element(By.ID, "rooms").get_attribute("value") == room
    text = unique("hello bob")
    alice.send(text)
    sent, received = alice.wait_delivered(text), bob.wait_delivered(text)
    assert sent["id"] == received["id"]
    assert received["author"] == "alice"
    reply = unique("hello alice")
    bob.send(reply)
    assert alice.wait_delivered(reply)["author"] == "bob"
    bob.wait_delivered(reply)


def test_both_pages_reconnect_by_themselves_after_the_app_restarts(stack, browsers, room):
    alice = browsers("alice", "alice", room)
    bob = browsers("bob", "bob", room)
    before = unique("before the restart")
    alice.send(before)
    bob.wait_delivered(before)
    connects = {page.label: page.connects() for page in (alice, bob)}

    stack.restart("app")  # SIGTERM to both Daphne processes, then started again

    for page in (alice, bob):
        page.wait(lambda p: p.connects() > connects[p.label] and p.synced(), "reconnected")
    after = unique("after the restart")
    bob.send(after)
    assert alice.wait_delivered(after)["author"] == "bob"
    bob.wait_delivered(after)
    for page in (alice, bob):
        assert len(page.with_text(before)) == 1, "history after the reconnect doubled a message"


def test_a_message_typed_during_an_outage_is_delivered_once(stack, browsers, room, owner_db):
    alice = browsers("alice", "alice", room)
    bob = browsers("bob", "bob", room)
    stack.stop("app")
    for page in (alice, bob):
        page.wait(lambda p: p.state() in ("reconnecting", "closing"), "showing the outage")

    text = unique("typed while the app is down")
    alice.send(text)
    pending = alice.wait(lambda p: p.with_text(text), "showing the message")
    assert len(pending) == 1 and pending[0]["pending"], pending
    assert pending[0]["id"] is None
    client_id = pending[0]["client_id"]
    assert client_id
    assert rows_with_client_id(owner_db, room, client_id) == []

    stack.restart("app")

    sent, received = alice.wait_delivered(text), bob.wait_delivered(text)
    assert sent["id"] == received["id"]
    assert rows_with_client_id(owner_db, room, client_id) == [(sent["id"], text)]
    stored = owner_db.execute(
        "SELECT count(*) FROM chat_message m JOIN chat_room r ON r.id = m.room_id "
        "WHERE r.slug = %s AND m.text = %s",
        [room, text],
    ).fetchone()[0]
    assert stored == 1


POOL_PANEL = re.compile(r"PostgreSQL server connections \(app role\): (\d+) of bound 12")


def _pool_panel(page) -> dict:
    panel = page.driver.find_element(By.ID, "pool")
    meter = page.driver.find_element(By.ID, "pool-meter")
    return {
        "state": panel.get_attribute("data-state"),
        "text": " ".join(panel.text.split()),  # a flex row: the browser puts its items on lines
        "meter": (meter.get_attribute("value"), meter.get_attribute("max"), meter.is_displayed()),
    }


def _pool_connections(page) -> int | None:
    """The number the panel shows, or None while it shows none."""
    match = POOL_PANEL.fullmatch(_pool_panel(page)["text"])
    return int(match.group(1)) if match else None


def test_the_pool_panel_shows_server_connections_against_the_bound_live(
    app_showing_pool, browsers, room, open_transactions
):
    """With CHAT_SHOW_POOL on, the page polls /pool-status under its policy: it shows the
    number and the bound, follows the server connections as they change, says
    "unavailable" while the app is down, and recovers by itself."""
    page = browsers("pool", "", room)
    page.wait(lambda p: _pool_connections(p) is not None, "showing the server connections")
    panel = _pool_panel(page)
    assert panel["state"] == "ok"
    assert _pool_connections(page) >= 1
    assert panel["meter"][1:] == ("12", True)
    assert _csp_violations(page) == []

    with open_transactions(3):  # three more held; the count runs on a fourth
        page.wait(lambda p: (_pool_connections(p) or 0) >= 4, "following the held connections")

    app_showing_pool.stop("app")
    page.wait(lambda p: _pool_panel(p)["state"] == "unavailable", "saying the count is unavailable")
    assert _pool_panel(page)["text"] == "PostgreSQL server connections (app role): unavailable"
    assert not _pool_panel(page)["meter"][2]

    app_showing_pool.restart("app")
    page.wait(lambda p: _pool_connections(p) is not None, "showing the count again")
    assert _csp_violations(page) == []
