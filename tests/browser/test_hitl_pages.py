"""The reviewers' pages in a real browser: Debian's headless Chromium driven by Playwright (never a browser
download: ``executable_path`` is the system's chromium), against the HITL app served by uvicorn in this
process on 127.0.0.1, over a real SQLite file. No Ray. Anything the page asks of another host is aborted.

A reviewer logs in, sees the queue, approves one item, corrects another -- first with text that is not JSON
(the page refuses to send it), then with JSON the agent's contract refuses (the server says why), then a
valid correction -- and the database holds exactly those decisions with their audit rows. Screenshots go to
the test's tmp dir and ``test-artifacts/`` (gitignored).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.unit.hitl.conftest import example_item

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
TOKEN = "alice-review-token-0123456789"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _need(what: str, ok: bool) -> None:
    if ok:
        return
    message = f"{what} is missing: .ci/run installs Debian's chromium; `pip install -e .[dev]` installs playwright"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture
def served(tmp_path, monkeypatch):
    """The HITL app on a free loopback port, over a fresh SQLite queue with three items."""
    import uvicorn

    from deployments.review.auth import Reviewers
    from deployments.review.routes import HitlService, build_hitl_app
    from hitl import ReviewStore

    monkeypatch.delenv("JUSTNEWS_HITL_DB", raising=False)
    store = ReviewStore(store_root=str(tmp_path / "store"))
    ids = store.enqueue_many([example_item(), example_item(reasons=("fallback",)),
                              example_item("fact_checker", ("unverified",))])
    app = build_hitl_app(HitlService(store, reviewers=Reviewers.parse(f"alice:{TOKEN}"), secret="browser-test"))
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.started, "uvicorn did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}", store, ids
    server.should_exit = True
    thread.join(10)
    store.close()


def _only_loopback(route) -> None:
    url = route.request.url
    if url.startswith(("http://127.0.0.1:", "data:", "about:")):
        route.continue_()
    else:
        route.abort()


@pytest.mark.slow
def test_reviewer_logs_in_approves_and_corrects_in_chromium(served, tmp_path):
    _need("Debian's chromium", Path(CHROMIUM).is_file())
    try:
        from playwright import sync_api
    except ImportError:
        sync_api = None
    _need("playwright (PyPI)", sync_api is not None)
    url, store, (first, second, third) = served
    started = time.monotonic()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    with sync_api.sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": 1280, "height": 900})
        try:
            context.route("**/*", _only_loopback)
            page = context.new_page()
            page.set_default_timeout(15_000)

            page.goto(f"{url}/hitl/")
            assert page.url.endswith("/hitl/login")
            page.fill("#name", "alice")
            page.fill("#token", TOKEN)
            page.click("#login")
            page.wait_for_url(f"{url}/hitl/")
            assert page.inner_text("#reviewer") == "alice"
            assert page.locator("#queue tbody tr").count() == 3
            page.screenshot(path=str(shots / "1-queue.png"), full_page=True)

            page.click(f"#review-{first}")
            page.wait_for_url(f"{url}/hitl/review/{first}")
            assert json.loads(page.inner_text("#input")) == example_item().input
            assert json.loads(page.inner_text("#answer")) == example_item().output
            page.click("#approve")
            page.wait_for_url(f"{url}/hitl/?done=*")
            assert f"Item {first} approved." in page.inner_text("#flash")
            assert page.locator("#queue tbody tr").count() == 2

            page.click(f"#review-{second}")
            page.wait_for_url(f"{url}/hitl/review/{second}")
            page.fill("#correction", '{"verdict": "revise", "issues": [')  # not JSON: the page keeps it
            page.click("#correct")
            assert page.inner_text("#json-status").startswith("Not JSON")
            assert page.url == f"{url}/hitl/review/{second}"

            page.fill("#correction", '{"verdict": "maybe", "issues": []}')  # JSON, off the critic contract
            page.click("#correct")
            page.wait_for_selector("#error")
            error = page.inner_text("#error")
            assert "does not fit the critic contract" in error and "verdict" in error
            assert json.loads(page.input_value("#correction")) == {"verdict": "maybe", "issues": []}
            page.screenshot(path=str(shots / "2-invalid-correction.png"), full_page=True)

            fixed = {"verdict": "revise", "issues": [{"kind": "sourcing", "severity": "medium",
                                                      "note": "attribute the cost figure"}]}
            page.fill("#correction", json.dumps(fixed))
            page.click("#format")
            assert page.inner_text("#json-status") == "JSON ok"
            page.click("#correct")
            page.wait_for_url(f"{url}/hitl/?done=*")
            assert f"Item {second} corrected." in page.inner_text("#flash")
            assert page.locator("#queue tbody tr").count() == 1
            page.screenshot(path=str(shots / "3-after-decisions.png"), full_page=True)
        finally:
            context.close()
    elapsed = time.monotonic() - started

    items = {i.id: i for i in store.list()}
    assert {i: (it.state, it.decided_by) for i, it in items.items()} == {
        first: ("approved", "alice"), second: ("corrected", "alice"), third: ("pending", None)}
    assert items[second].correction == fixed and items[first].correction is None
    trail = [(e.item_id, e.actor, e.action) for e in store.audit()]
    assert trail == [(first, "agent", "queued"), (second, "agent", "queued"), (third, "agent", "queued"),
                     (first, "alice", "claimed"), (first, "alice", "approved"),
                     (second, "alice", "claimed"), (second, "alice", "corrected")]
    assert store.audit(second)[-1].detail["output"] == [example_item().output, fixed]

    ARTIFACTS.mkdir(exist_ok=True)
    for shot in shots.iterdir():
        assert shot.stat().st_size > 5_000
        shutil.copy(shot, ARTIFACTS / f"hitl-{shot.name}")
    print(f"browser test: {elapsed:.1f} s in Chromium; screenshots in {ARTIFACTS}")
