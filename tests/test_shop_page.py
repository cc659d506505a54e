"""The web page's shop controls in Debian's Chromium (Playwright): filters built from the
attribute columns, "more like this" / "less like this" on each card, collapse on by default."""

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
uvicorn = pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from varsitysrch.service import create_app  # noqa: E402


@pytest.fixture(scope="module")
def shop_server(
    synth_catalogue: tuple[Path, dict[str, str]], synth_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, list[str], dict[str, str]]]:
    from varsitysrch import train_clusters
    from varsitysrch._store import FeatureStore

    root, labels = synth_catalogue
    tmp = tmp_path_factory.mktemp("shop-page")
    ids = FeatureStore.open(synth_store).ids
    (tmp / "a.csv").write_text(
        "image,shape,price,in_stock\n"
        + "".join(f"{i},{labels[i]},{j},{'yes' if j % 2 else 'no'}\n" for j, i in enumerate(ids)),
        encoding="utf-8",
    )
    train_clusters(
        synth_store, tmp / "m.vsm", tmp / "m.csv", 3, attributes=tmp / "a.csv", show_progress=False
    )
    app = create_app(
        tmp / "m.vsm", image_root=root, cache_dir=tmp / "thumbs", thumb_size=96, reload_interval=0
    )
    from liveserver import serve

    with serve(app) as url:
        yield url, ids, labels


@pytest.fixture
def pg(shop_server: Any) -> Iterator[Any]:
    server = shop_server[0]
    problems: list[str] = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.set_default_timeout(30_000)
            page.route(
                "**/*", lambda r: r.continue_() if r.request.url.startswith(server + "/") else r.abort()
            )
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server + "/")
            page.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
            page.wait_for_function("() => !document.getElementById('filters').hidden")
            yield page
            assert problems == []
        finally:
            browser.close()


def cards(page: Any, label_prefix: str) -> list[dict[str, str]]:
    page.wait_for_function(
        "p => { const r = document.getElementById('results');"
        " return (r.dataset.query || '').startsWith(p) && !r.hasAttribute('aria-busy')"
        " && r.querySelectorAll('.card:not(.skeleton)').length > 0; }",
        arg=label_prefix,
    )
    out = []
    loc = page.locator("#results .card")
    for i in range(loc.count()):
        c = loc.nth(i)
        out.append({"id": c.get_attribute("data-id"), "dups": c.get_attribute("data-dups")})
    return out


def test_filters_are_built_from_the_columns_and_applied(pg: Any, shop_server: Any) -> None:
    _, ids, labels = shop_server
    assert pg.locator("#filters select[data-where='shape'] option").count() == 1 + len(set(labels.values()))
    assert pg.locator("#filters input[data-where='price']").count() == 2
    assert pg.locator("#collapse").is_checked()  # collapse is on by default in the page
    pg.locator("#results").evaluate("r => r.dataset.query = ''")
    pg.evaluate(f"() => location.hash = '#id=' + encodeURIComponent({ids[0]!r})")
    cards(pg, "id:")
    shape = labels[ids[1]]
    pg.select_option("#filters select[data-where='shape']", shape)
    pg.wait_for_function(
        "s => [...document.querySelectorAll('#results .card')].length > 0 && "
        "[...document.querySelectorAll('#results .card .attrs')].every(a => a.textContent.includes(s))",
        arg=shape,
    )
    pg.fill("#filters input[data-where='price'][data-bound='max']", "10")
    pg.dispatch_event("#filters input[data-where='price'][data-bound='max']", "change")
    want = {i for j, i in enumerate(ids) if labels[i] == shape and j <= 10 and i != ids[0]}
    pg.uncheck("#collapse")
    pg.select_option("#top-n", "50")
    pg.wait_for_function(
        "n => document.querySelectorAll('#results .card').length === n"
        " && document.getElementById('results').getAttribute('aria-busy') === null",
        arg=len(want),
    )
    assert {c["id"] for c in cards(pg, "id:")} == want


def test_more_and_less_like_this_refine_the_results(pg: Any, shop_server: Any) -> None:
    _, ids, _labels = shop_server
    pg.evaluate(f"() => location.hash = '#id=' + encodeURIComponent({ids[0]!r})")
    first = cards(pg, "id:")
    liked = first[1]["id"]
    pg.locator(f"#results .card[data-id='{liked}'] .like").click()
    after = cards(pg, f"id:{ids[0]}+feedback:1/0")
    assert liked not in {c["id"] for c in after} and ids[0] not in {c["id"] for c in after}
    assert not pg.locator("#feedback").is_hidden()
    disliked = after[0]["id"]
    pg.locator(f"#results .card[data-id='{disliked}'] .less").click()
    after2 = cards(pg, f"id:{ids[0]}+feedback:1/1")
    assert not {liked, disliked} & {c["id"] for c in after2}
    assert "1 more like, 1 less like" in pg.locator("#feedback-text").inner_text()
    pg.click("#feedback-clear")
    pg.wait_for_function("() => document.getElementById('results').dataset.query.indexOf('feedback') < 0")
    assert pg.locator("#feedback").is_hidden()


def test_collapse_switch_folds_near_identical_photos(pg: Any, shop_server: Any) -> None:
    _, ids, _ = shop_server
    pg.select_option("#top-n", "20")
    pg.evaluate(f"() => location.hash = '#id=' + encodeURIComponent({ids[0]!r})")
    on = cards(pg, "id:")
    folded = sum(int(c["dups"] or 0) for c in on)
    assert folded > 0 and pg.locator("#results .card .dups").count() > 0  # synthetic classes hold near-copies
    pg.uncheck("#collapse")
    pg.wait_for_function(
        "n => document.querySelectorAll('#results .card').length > n && "
        "document.getElementById('results').getAttribute('aria-busy') === null",
        arg=len(on),
    )
    assert pg.locator("#results .card .dups").count() == 0
