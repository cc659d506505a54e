"""End to end: uvicorn on 127.0.0.1 and Debian's Chromium driven by Playwright (plain sync API).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``) and the ``playwright`` Python
package; never ``playwright install``.  Skipped cleanly when either is missing.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from varsitysrch.service import create_app  # noqa: E402

TIMEOUT_MS = 30_000


#: A catalogue image whose file is gone from the served folder: its thumbnail is a 404.
MISSING = "yellow_triangles/img_05.jpg"


@pytest.fixture(scope="module")
def served_root(
    synth_catalogue: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    root = tmp_path_factory.mktemp("browser-catalogue") / "catalogue"
    shutil.copytree(synth_catalogue[0], root)
    (root / MISSING).unlink()
    return root


@pytest.fixture(scope="module")
def server(
    synth_model: tuple[Path, Path], served_root: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """uvicorn serving the synthetic catalogue on a free 127.0.0.1 port, in a background thread."""
    model, csv = synth_model
    thumbs = tmp_path_factory.mktemp("browser-thumbs")
    app = create_app(model, csv, image_root=served_root, cache_dir=thumbs, thumb_size=128, reload_interval=0)
    from liveserver import serve

    with serve(app) as url:
        yield url


PHONE = {"width": 390, "height": 844}
DESKTOP = {"width": 1280, "height": 900}


@pytest.fixture(params=["desktop"])
def page(server: str, request: pytest.FixtureRequest) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    problems: dict[str, list[str]] = {"external": [], "console": [], "pageerror": []}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            viewport = PHONE if request.param == "phone" else DESKTOP
            context = browser.new_context(viewport=viewport, is_mobile=request.param == "phone")
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
    try:
        pg.wait_for_function(
            "([label, n]) => { const r = document.getElementById('results');"
            " return r.dataset.query === label && r.querySelectorAll('.card').length === n; }",
            arg=[label, count],
            timeout=10_000,
        )
    except Exception:
        state = pg.evaluate(
            "() => [document.getElementById('results').dataset.query,"
            " document.querySelectorAll('#results .card').length,"
            " document.getElementById('status').textContent]"
        )
        raise AssertionError(f"waiting for {label!r} x {count}: page shows {state}") from None
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


def expected_only(problems: dict[str, list[str]], *codes: int) -> dict[str, list[str]]:
    """The problems, less console lines for failed fetches with these statuses (the page shows them)."""
    codes = codes or (404,)  # the thumbnail of MISSING, whenever it is among the results
    console = [m for m in problems["console"] if not any(f"status of {c}" in m for c in codes)]
    return {**problems, "console": console}


def no_broken_images(pg: Any) -> None:
    """Every <img> on the page has loaded (a failed one is replaced by a "no preview" box)."""
    pg.wait_for_function(
        "() => [...document.querySelectorAll('img')].filter(i => i.offsetParent !== null)"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )


def watch_skeletons(pg: Any) -> None:
    pg.evaluate(
        "() => { window.__skeletons = 0; new MutationObserver(() => {"
        " window.__skeletons += document.querySelectorAll('#results .card.skeleton').length;"
        " }).observe(document.getElementById('results'), {childList: true}); }"
    )


def test_upload_search_and_more_like_this(
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

    # upload a photo through the file input; placeholders show while it runs
    query = sorted(labels)[2]  # a catalogue photo: its own first hit, score 1
    pg.select_option("#top-n", "10")
    watch_skeletons(pg)
    pg.set_input_files("#file", str(root / query))
    hits = wait_results(pg, "upload:" + Path(query).name, 10)
    assert pg.evaluate("window.__skeletons") >= 10  # loading placeholders were shown
    assert pg.locator("#results .skeleton").count() == 0
    assert [h["rank"] for h in hits] == list(range(1, 11))
    scores = [h["score"] for h in hits]
    assert scores[0] == max(scores)  # the photo itself first (Hit.score: the plain cosine, see _pipeline)
    assert hits[0]["id"] == query and hits[0]["shown"] in ("1.000", "0.999")
    assert not pg.locator("#query").is_hidden()
    assert "10 results" in pg.locator("#status").inner_text()
    wait_images_loaded(pg, "#results .card img")
    pg.screenshot(path=str(tmp_path / "results.png"), full_page=True)
    assert (tmp_path / "results.png").stat().st_size > 10_000

    # "more like this" on a result: a search by its id that leaves the item itself out
    clicked = hits[4]["id"]
    pg.locator("#results .card").nth(4).locator(".thumb").click()
    again = wait_results(pg, "id:" + clicked, 10)
    assert clicked not in [h["id"] for h in again]
    assert [h["rank"] for h in again] == list(range(1, 11))
    # in the service's ranking (the page collapses copies by default; the query is expanded, so the
    # plain-cosine scores need not decrease), with confidence and its words monotone in rank
    url = f"{server}/search?image_id={quote(clicked)}&include_self=false&top_n=10&collapse=true"
    with urllib.request.urlopen(url) as r:
        api = json.loads(r.read())["hits"]
    assert [h["id"] for h in again] == [h["image"] for h in api]
    conf = [h["confidence"] for h in api]
    assert conf == sorted(conf, reverse=True)
    assert pg.locator("#query-caption").inner_text() == clicked
    assert pg.evaluate("location.hash") == "#id=" + clicked.replace("/", "%2F")
    wait_images_loaded(pg, "#results .card img")

    # the button does the same; the browser's back button returns to the previous search
    second_id = again[1]["id"]
    pg.locator("#results .card").nth(1).locator(".more").click()
    second = wait_results(pg, "id:" + second_id, 10)
    assert second_id not in [h["id"] for h in second]
    pg.go_back()
    back = wait_results(pg, "id:" + clicked, 10)
    assert [h["id"] for h in back] == [h["id"] for h in again]
    assert expected_only(problems) == {"external": [], "console": [], "pageerror": []}


def test_options_rerun_the_current_search(
    server: str, page: tuple[Any, dict[str, list[str]]], synth_catalogue: tuple[Path, dict[str, str]]
) -> None:
    pg, problems = page
    root, labels = synth_catalogue
    query = sorted(labels)[7]
    pg.goto(server + "/")
    pg.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
    pg.set_input_files("#file", str(root / query))
    label = "upload:" + Path(query).name
    wait_results(pg, label, 10)
    pg.select_option("#top-n", "5")  # the same upload again, 5 results
    five = wait_results(pg, label, 5)
    assert five[0]["id"] == query
    pg.check("#exact")
    pg.wait_for_function("() => document.getElementById('status').textContent.includes('all clusters')")
    assert len(wait_results(pg, label, 5)) == 5
    pg.uncheck("#exact")
    pg.fill("#nprobe", "1")
    pg.dispatch_event("#nprobe", "change")
    pg.wait_for_function("() => document.getElementById('status').textContent.includes('scanned 1 cluster')")
    # and for a search by catalogue id
    clicked = pg.locator("#results .card").nth(2).get_attribute("data-id")
    pg.locator("#results .card").nth(2).locator(".thumb").click()
    wait_results(pg, "id:" + clicked, 5)
    pg.uncheck("#collapse")  # the whole catalogue, near-identical photos too (collapse is on by default)
    pg.select_option("#top-n", "20")
    hits = wait_results(pg, "id:" + clicked, len(labels) - 1 if len(labels) <= 20 else 20)
    assert clicked not in [h["id"] for h in hits]
    assert expected_only(problems) == {"external": [], "console": [], "pageerror": []}


def test_error_states_are_clean(
    server: str,
    page: tuple[Any, dict[str, list[str]]],
    synth_catalogue: tuple[Path, dict[str, str]],
    tmp_path: Path,
) -> None:
    pg, problems = page
    root, labels = synth_catalogue
    pg.goto(server + "/")
    pg.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")

    # a file that is not an image: a message, no broken query image, no stale results
    pg.set_input_files("#file", str(root / sorted(labels)[0]))
    wait_results(pg, "upload:" + Path(sorted(labels)[0]).name, 10)
    bad = tmp_path / "notes.jpg"
    bad.write_text("not pixels\n" * 10)
    pg.set_input_files("#file", str(bad))
    pg.wait_for_function("() => document.getElementById('status').dataset.code === '415'")
    status = pg.locator("#status").inner_text()
    assert "not an image in a supported format" in status and "JPEG, PNG" in status
    assert pg.locator("#query").is_hidden()
    assert pg.locator("#results li").count() == 0
    no_broken_images(pg)

    # a wrong number of clusters: the field's name, in the page's words (checked in the page...)
    pg.fill("#nprobe", "99")
    pg.dispatch_event("#nprobe", "change")  # nothing to re-run yet: no current search
    pg.locator("#results").evaluate("r => r.dataset.query = ''")
    pg.goto(server + "/#id=" + sorted(labels)[3].replace("/", "%2F"))
    pg.wait_for_function("() => document.getElementById('status').dataset.code === '422'")
    assert pg.locator("#status").inner_text() == "Clusters to scan must be between 1 and 4."
    # ... and when the server is the one to refuse it
    pg.evaluate("document.getElementById('nprobe').removeAttribute('max')")
    pg.locator("#status").evaluate("s => { s.textContent = ''; delete s.dataset.code; }")
    pg.dispatch_event("#nprobe", "change")
    pg.wait_for_function("() => document.getElementById('status').dataset.code === '422'")
    text = pg.locator("#status").inner_text()
    assert text == "Clusters to scan must be between 1 and 4.", text
    assert "nprobe" not in pg.locator("main").inner_text()
    assert pg.locator("#results li").count() == 0
    pg.fill("#nprobe", "")

    # an unknown cluster after a real one: no stale title, pager or members
    pg.goto(server + "/#cluster=1")
    pg.wait_for_selector("#members .card:not(.skeleton)")
    assert pg.locator("#cluster-title").inner_text().startswith("Cluster 1")
    pg.goto(server + "/#cluster=99")
    pg.wait_for_function("() => document.getElementById('cluster-status').dataset.code === '404'")
    assert (
        pg.locator("#cluster-status").inner_text()
        == "There is no cluster 99. This catalogue has clusters 0 to 3."
    )
    assert pg.locator("#cluster-detail").is_hidden() and pg.locator("#members li").count() == 0
    pg.goto(server + "/#cluster=abc")
    pg.wait_for_function(
        "() => document.getElementById('cluster-status').textContent.includes('no cluster abc')"
    )
    assert pg.locator("#cluster-detail").is_hidden()

    # a catalogue image whose file is gone: "no preview", not a broken-image icon
    pg.goto(server + "/#id=" + MISSING.replace("/", "%2F"))
    pg.wait_for_selector("#query .noimg")
    wait_results(pg, "id:" + MISSING, 10)
    no_broken_images(pg)
    assert expected_only(problems, 404, 415, 422) == {"external": [], "console": [], "pageerror": []}


def test_clusters_view(server: str, page: tuple[Any, dict[str, list[str]]]) -> None:
    pg, problems = page
    pg.goto(server + "/")
    pg.click("#nav-clusters")
    pg.wait_for_selector(".cluster-card:not(.skeleton)")
    cards = pg.locator(".cluster-card")
    assert cards.count() == 4
    cards.first.click()
    pg.wait_for_selector("#members .card:not(.skeleton)")
    assert pg.locator("#cluster-title").inner_text().startswith("Cluster 0")
    assert pg.locator("#members .card").count() >= 1
    assert pg.locator("#prev").is_disabled()
    member = pg.locator("#members .card").first.get_attribute("data-id")
    pg.locator("#members .card").first.locator(".thumb").click()
    hits = wait_results(pg, "id:" + member, 10)
    assert member not in [h["id"] for h in hits]
    assert expected_only(problems) == {"external": [], "console": [], "pageerror": []}


def test_docs_work_offline(server: str, page: tuple[Any, dict[str, list[str]]], tmp_path: Path) -> None:
    pg, problems = page
    pg.goto(server + "/docs")
    pg.wait_for_selector(".swagger-ui .info .title")
    assert "varsitysrch" in pg.locator(".swagger-ui .info .title").inner_text()
    pg.wait_for_selector('.opblock-summary-path[data-path="/search/batch"]')
    pg.screenshot(path=str(tmp_path / "docs.png"))
    assert problems == {"external": [], "console": [], "pageerror": []}  # every asset from this server


@pytest.mark.parametrize("page", ["phone"], indirect=True)
def test_phone_scrolls_results_into_view(
    server: str, page: tuple[Any, dict[str, list[str]]], synth_catalogue: tuple[Path, dict[str, str]]
) -> None:
    pg, problems = page
    root, labels = synth_catalogue
    pg.goto(server + "/")
    pg.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
    first_card_top = "document.getElementById('results').getBoundingClientRect().top"
    query = sorted(labels)[5]
    pg.set_input_files("#file", str(root / query))
    wait_results(pg, "upload:" + Path(query).name, 10)
    top = pg.evaluate(first_card_top)
    height = pg.evaluate("window.innerHeight")
    assert 0 <= top < height * 0.6, (top, height)  # the results are on screen, not below the fold
    assert pg.evaluate("window.scrollY") > 0
    width = pg.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]  # nothing wider than the phone
    assert expected_only(problems) == {"external": [], "console": [], "pageerror": []}
