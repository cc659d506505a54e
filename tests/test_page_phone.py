"""The web page at a phone's width (390 px) in Debian's Chromium (Playwright): what issue 22 saw.

* the query caption wrapped "22 KB" as "2 / 2 KB" (``word-break: break-all``): a size never
  breaks inside itself, whatever the length of the file name before it.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking"]
PHONE = {"width": 390, "height": 844}

pytestmark = pytest.mark.browser

if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} not installed (apt-get install -y chromium)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api")
pytest.importorskip("uvicorn")
pytest.importorskip("fastapi")

from varsitysrch.service import create_app  # noqa: E402


@pytest.fixture(scope="module")
def server(
    synth_catalogue: tuple[Path, dict[str, str]],
    synth_model: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    from liveserver import serve

    root, _ = synth_catalogue
    model, csv = synth_model
    tmp = tmp_path_factory.mktemp("phone")
    app = create_app(model, csv, image_root=root, cache_dir=tmp / "thumbs", thumb_size=96, reload_interval=0)
    with serve(app) as url:
        yield url


@pytest.fixture
def phone(server: str) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport=PHONE, is_mobile=True)
            pg = context.new_page()
            pg.set_default_timeout(15_000)
            pg.goto(server + "/")
            pg.wait_for_function("() => document.getElementById('stats').textContent.includes('images')")
            yield pg
        finally:
            browser.close()


#: the lines the text after the last "·" of the caption is laid out on (1: it is not broken)
_SIZE_LINES = """(name) => {
  const cap = document.getElementById('query-caption');
  const text = cap.textContent;
  const at = text.lastIndexOf('\u00b7');
  cap.textContent = name + text.slice(text.lastIndexOf(' ', at));
  const node = cap.firstChild, start = cap.textContent.lastIndexOf('\u00b7') + 2;
  const r = document.createRange();
  r.setStart(node, start);
  r.setEnd(node, node.length);
  const tops = new Set(Array.from(r.getClientRects()).map((b) => Math.round(b.top)));
  return [cap.textContent.slice(start), tops.size];
}"""


def test_the_uploaded_files_size_never_breaks_inside_itself(phone: Any, tmp_path: Path) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = tmp_path / "IMG_20240101_123456.png"
    Image.fromarray(rng.integers(0, 256, (72, 96, 3), dtype=np.uint8)).save(photo)
    kb = round(photo.stat().st_size / 1024)
    assert 10 <= kb < 100  # a two-digit size, as in the issue ("22 KB")
    phone.set_input_files("#file", str(photo))
    phone.wait_for_function("() => document.getElementById('query-caption').textContent.includes('KB')")
    caption = phone.locator("#query-caption").inner_text()
    assert caption.endswith(f"{kb}\u00a0KB"), caption  # the number and its unit are held together
    # every length of name before it: wherever the line ends, the size is on one line
    for n in range(1, 90):
        size, lines = phone.evaluate(_SIZE_LINES, "x" * n)
        assert size == f"{kb}\u00a0KB" and lines == 1, (n, size, lines)
