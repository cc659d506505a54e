"""End to end: uvicorn on 127.0.0.1 and Debian's Chromium driven by Playwright (plain sync API).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; never ``playwright install``.  Skipped cleanly when either is missing.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from varsitysrch._service import create_app  # noqa: E402

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def server(synth_model: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """uvicorn serving the synthetic catalogue on a free 127.0.0.1 port, in a background thread."""
    model, csv = synth_model
    app = create_app(model, csv, cache_dir=tmp_path_factory.mktemp("browser-thumbs"), thumb_size=128)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        thread.join(timeout=10)
        sock.close()


@pytest.fixture
def page(server: str) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    problems: dict[str, list[str]] = {"external": [], "console": [], "pageerror": []}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900})
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)

            def guard(route: Any) -> None:  # offline: only this server (and blob:/data:) may be used
                url = route.request.url
                if url.startswith(server + "/"):
                    route.continue_()
                else:
                    problems["external"].append(url)
                    route.abort()

            pg.route("**/*", guard)
            pg.on("console", lambda m: m.type == "error" and problems["console"].append(m.text))
            pg.on("pageerror", lambda e: problems["pageerror"].append(str(e)))
            yield pg, problems
        finally:
            browser.close()


def wait_results(pg: Any, label: str, count: int) -> list[dict[str, Any]]:
    pg.wait_for_function(
        "([label, n]) => { const r = document.getElementById('results');"
        " return r.dataset.query === label && r.querySelectorAll('.card').length === n; }",
        arg=[label, count],
    )
    cards = pg.locator("#results .card")
    out = []
    for i in range(cards.count()):
        c = cards.nth(i)
        out.append(
            {
                "id": c.get_attribute("data-id"),
                "rank": int(c.get_attribute("data-rank")),
                "score": float(c.get_attribute("data-score")),
                "shown": c.locator(".score").inner_text(),
            }
        )
    return out


def wait_images_loaded(pg: Any, selector: str) -> None:
    pg.wait_for_function(
        "sel => { const imgs = [...document.querySelectorAll(sel)];"
        " return imgs.length > 0 && imgs.every(i => i.complete && i.naturalWidth > 0); }",
        arg=selector,
    )


def test_upload_search_and_click_through(
    server: str,
    page: tuple[Any, dict[str, list[str]]],
    synth_catalogue: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    pg, problems = page
    root, labels = synth_catalogue
    pg.goto(server + "/")
    pg.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
    assert f"{len(labels)} images" in pg.locator("#stats").inner_text()

    # upload a photo through the file input
    query = sorted(labels)[2]  # a catalogue photo: its own first hit, score 1
    pg.select_option("#top-n", "10")
    pg.set_input_files("#file", str(root / query))
    hits = wait_results(pg, "upload:" + Path(query).name, 10)
    assert [h["rank"] for h in hits] == list(range(1, 11))
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert hits[0]["id"] == query and hits[0]["shown"] in ("1.000", "0.999")
    assert not pg.locator("#query").is_hidden()
    assert "10 results" in pg.locator("#status").inner_text()
    wait_images_loaded(pg, "#results .card img")
    pg.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    assert (tmp_path / "results.png").stat().st_size > 10_000

    # click a result: a new search by its id, whose first hit is that image
    clicked = hits[4]["id"]
    pg.locator("#results .card").nth(4).locator(".thumb").click()
    again = wait_results(pg, "id:" + clicked, 10)
    assert again[0]["id"] == clicked
    assert [h["score"] for h in again] == sorted((h["score"] for h in again), reverse=True)
    assert pg.evaluate("location.hash") == "#id=" + clicked.replace("/", "%2F")
    wait_images_loaded(pg, "#results .card img")
    pg.screenshot(path=str(tmp_path / "click-through.png"), full_page=True)

    # the browser's back button returns to the previous search
    pg.locator("#results .card").nth(1).locator(".thumb").click()
    second = wait_results(pg, "id:" + again[1]["id"], 10)
    assert second[0]["id"] == again[1]["id"]
    pg.go_back()
    back = wait_results(pg, "id:" + clicked, 10)
    assert back[0]["id"] == clicked

    assert problems == {"external": [], "console": [], "pageerror": []}


def test_clusters_view_and_errors(
    server: str, page: tuple[Any, dict[str, list[str]]], tmp_path: Path
) -> None:
    pg, problems = page
    pg.goto(server + "/")
    pg.click("#nav-clusters")
    pg.wait_for_selector(".cluster-card")
    cards = pg.locator(".cluster-card")
    assert cards.count() == 4
    wait_images_loaded(pg, ".cluster-card img")
    cards.first.click()
    pg.wait_for_selector("#members .card")
    assert pg.locator("#cluster-title").inner_text().startswith("Cluster 0")
    assert pg.locator("#members .card").count() >= 1
    assert pg.locator("#prev").is_disabled()
    # click a member: search by it
    member = pg.locator("#members .card").first.get_attribute("data-id")
    pg.locator("#members .card").first.locator(".thumb").click()
    hits = wait_results(pg, "id:" + member, 10)
    assert hits[0]["id"] == member

    # a file that is not an image: a clear error, no crash
    bad = tmp_path / "notes.jpg"
    bad.write_text("not pixels\n" * 10)
    pg.set_input_files("#file", str(bad))
    pg.wait_for_function("() => document.getElementById('status').classList.contains('error')")
    status = pg.locator("#status").inner_text()
    assert "415" in status and "not an image" in status
    problems["console"] = [m for m in problems["console"] if "415" not in m]  # the failed fetch is logged
    assert problems == {"external": [], "console": [], "pageerror": []}
