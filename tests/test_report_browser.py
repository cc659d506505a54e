"""The generated report opened from file:// in Debian's Chromium (Playwright), offline: every section renders.

Needs ``/usr/bin/chromium`` and the ``playwright`` package (never ``playwright install``); skipped
cleanly without them.  Screenshots go to ``$VARSITYSRCH_SCREENS`` (default: the test's tmp folder).
"""

from __future__ import annotations

import os
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
pytest.importorskip("matplotlib")

from test_report import trained  # noqa: E402,F401  (the module-scoped trained catalogue fixture)
from varsitysrch._report import make_report  # noqa: E402

TIMEOUT_MS = 30_000


@pytest.fixture(scope="module")
def report(trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:  # noqa: F811
    out = tmp_path_factory.mktemp("browser-report") / "report"
    make_report(
        trained["features"], trained["model"], trained["csv"], out, image_root=trained["root"], central=3,
        outliers=3, show_progress=False,
    )  # fmt: skip
    return out


@pytest.fixture
def screens(tmp_path: Path) -> Path:
    d = Path(os.environ.get("VARSITYSRCH_SCREENS", tmp_path))
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture
def page(report: Path) -> Iterator[tuple[Any, dict[str, list[str]]]]:
    problems: dict[str, list[str]] = {"external": [], "console": [], "pageerror": [], "failed": []}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 900}, offline=True)
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)

            def guard(route: Any) -> None:  # offline: only files of the report folder
                url = route.request.url
                if url.startswith(report.resolve().as_uri() + "/"):
                    route.continue_()
                else:
                    problems["external"].append(url)
                    route.abort()

            pg.route("**/*", guard)
            pg.on("console", lambda m: m.type == "error" and problems["console"].append(m.text))
            pg.on("pageerror", lambda e: problems["pageerror"].append(str(e)))
            pg.on("requestfailed", lambda r: problems["failed"].append(r.url))
            yield pg, problems
        finally:
            browser.close()
    assert problems == {"external": [], "console": [], "pageerror": [], "failed": []}


def _all_images_loaded(pg: Any, selector: str) -> int:
    pg.wait_for_function(
        f"Array.from(document.querySelectorAll({selector!r})).every(i => i.complete)", timeout=TIMEOUT_MS
    )
    sizes = pg.eval_on_selector_all(selector, "els => els.map(e => e.naturalWidth)")
    assert sizes and all(w > 0 for w in sizes), (selector, sizes)
    return len(sizes)


def test_overview_and_cluster_pages(
    page: tuple[Any, dict[str, list[str]]], report: Path, screens: Path
) -> None:
    pg, _ = page
    pg.goto((report / "index.html").as_uri())
    assert pg.locator("h1").inner_text() == "Catalogue report"
    facts = pg.locator("#overview table.facts").inner_text()
    for label in ("Catalogue images", "Clusters (k)", "Extractor", "Model trained", "Duplicate groups"):
        assert label in facts
    assert "26" in facts and "efficientnet-lite0" in facts
    assert _all_images_loaded(pg, "#overview .figs img") == 2  # cluster sizes + silhouette (no choose-k plot)
    assert pg.locator("table.clusters tbody tr").count() == 4
    pg.screenshot(path=str(screens / "report-overview.png"), full_page=True)
    pg.locator("table.clusters tbody tr").first.locator("a").first.click()
    pg.wait_for_url("**/clusters/c0000.html")
    assert pg.locator("h1").inner_text() == "Cluster 0"
    assert _all_images_loaded(pg, "#central .sheet img") >= 1
    assert pg.locator("#near li").count() == 3
    rows = pg.locator("#outliers table.outliers tbody tr")
    assert rows.count() == 3 and [r.split("\t")[0] for r in rows.all_inner_texts()] == ["1", "2", "3"]
    _all_images_loaded(pg, "#outliers img")
    pg.screenshot(path=str(screens / "report-cluster.png"), full_page=True)


def test_duplicates_page(page: tuple[Any, dict[str, list[str]]], report: Path, screens: Path) -> None:
    pg, _ = page
    pg.goto((report / "duplicates.html").as_uri())
    assert "0.93" in pg.locator("#dup-method").inner_text()
    groups = pg.locator("#dup-groups .group")
    assert groups.count() >= 1
    assert "img_00_copy.png" in pg.locator("#dup-groups").inner_text()
    _all_images_loaded(pg, "#dup-groups img")
    assert pg.locator("#variant-groups h2").is_visible()
    pg.screenshot(path=str(screens / "report-duplicates.png"), full_page=True)


def test_map_draws_points_and_thumbnails_and_hovers(
    page: tuple[Any, dict[str, list[str]]], report: Path, screens: Path
) -> None:
    pg, _ = page
    pg.goto((report / "map.html").as_uri())
    pg.wait_for_function(
        "() => { const c = document.getElementById('map');"
        " return c.dataset.points === '26' && Number(c.dataset.thumbs) > 0"
        " && Number(c.dataset.thumbs) === window.VS_MAP.thumbs.length; }"
    )
    x, y = pg.evaluate("window.VS_MAP_VIEW.pos(window.VS_MAP.thumbs[0][0])")
    box = pg.locator("#map").bounding_box()
    scale = box["width"] / pg.evaluate("window.VS_MAP_VIEW.width")
    pg.mouse.move(box["x"] + x * scale, box["y"] + y * scale)
    tip = pg.locator("#tip")
    tip.wait_for(state="visible")
    assert "cluster" in tip.inner_text()
    pg.screenshot(path=str(screens / "report-map.png"))
    pg.mouse.wheel(0, -300)  # zoom in: still draws
    pg.wait_for_function("Number(document.getElementById('map').dataset.points) > 0")


# ---------------------------------------------------------------- served by the HTTP service
@pytest.fixture(scope="module")
def served(report: Path, trained: dict[str, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:  # noqa: F811
    """uvicorn on 127.0.0.1 serving the trained catalogue with its report (the Catalogue view)."""

    pytest.importorskip("uvicorn")
    pytest.importorskip("fastapi")
    from varsitysrch.service import create_app

    app = create_app(
        trained["model"], trained["csv"], image_root=trained["root"], report_dir=report,
        cache_dir=tmp_path_factory.mktemp("served-thumbs"), reload_interval=0,
    )  # fmt: skip
    from liveserver import serve

    with serve(app) as url:
        yield url


def test_catalogue_view_and_confidence_words_in_the_web_page(
    served: str,
    trained: dict[str, Path],  # noqa: F811
    screens: Path,
) -> None:
    errors: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            pg = browser.new_page(viewport={"width": 1280, "height": 900})
            pg.set_default_timeout(TIMEOUT_MS)
            pg.on("console", lambda m: m.type == "error" and errors.append(m.text))  # CSP violations too
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.on("response", lambda r: r.status >= 400 and errors.append(f"HTTP {r.status} {r.url}"))
            pg.goto(served + "/")
            link = pg.locator("#nav-catalogue")
            link.wait_for(state="visible")
            pg.set_input_files("#file", str(trained["root"] / "red_circles" / "img_01.jpg"))
            pg.wait_for_function("() => document.querySelectorAll('#results .card .match').length > 0")
            words = pg.locator("#results .card .match").all_inner_texts()
            assert words[0] == "very similar" and set(words) <= {"very similar", "similar", "loosely related"}
            pg.screenshot(path=str(screens / "service-results-confidence.png"))
            link.click()
            pg.wait_for_url("**/report/")
            assert pg.locator("h1").inner_text() == "Catalogue report"
            pg.goto(served + "/report/map.html")  # the map's script and canvas under the page's CSP
            pg.wait_for_function("() => Number(document.getElementById('map').dataset.thumbs) > 0")
            pg.screenshot(path=str(screens / "service-report-map.png"))
        finally:
            browser.close()
    assert errors == []
