"""Issue 19, defect 6: a report of a model with markup in every free-text field, opened from
``file://`` in Debian's Chromium (Playwright): no injected script runs on any page.

Before the fix ``training.trained_at``, ``training.backend`` and ``extractor.*`` went into
``index.html`` unescaped and the injected script ran.  Needs ``/usr/bin/chromium`` and the
``playwright`` package (never ``playwright install``); skipped cleanly without them.
"""

from __future__ import annotations

import os
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

from test_hardening2_surface import SCRIPT_PAYLOAD, XSS_NAME, hostile_model, shop  # noqa: E402,F401
from varsitysrch._report import make_report  # noqa: E402

TIMEOUT_MS = 30_000


def test_no_script_from_a_model_file_or_a_file_name_runs_in_the_report(
    shop: dict[str, Any],  # noqa: F811
    tmp_path: Path,
) -> None:
    model = hostile_model(shop, tmp_path / "hostile.vsm")
    out = tmp_path / "report"
    make_report(shop["features"], model, None, out, image_root=shop["root"], central=20, show_progress=False)
    pages = sorted(out.rglob("*.html"))
    assert len(pages) >= 5  # overview, duplicates, map, two clusters
    base = out.resolve().as_uri() + "/"
    dialogs: list[str] = []
    outside: list[str] = []
    seen: dict[str, dict[str, Any]] = {}
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(offline=True)
            pg = context.new_page()
            pg.set_default_timeout(TIMEOUT_MS)

            def guard(route: Any) -> None:  # only the report's own files
                if route.request.url.startswith(base):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            pg.route("**/*", guard)
            pg.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            for page in pages:
                pg.goto(page.resolve().as_uri(), wait_until="load")
                pg.wait_for_timeout(100)  # onerror handlers of failed images run after load
                seen[page.relative_to(out).as_posix()] = pg.evaluate(
                    """() => ({
                        name: window.name,
                        inline: document.querySelectorAll('script:not([src])').length,
                        injected: document.querySelectorAll('img[src="x"], [onerror], [onload]').length,
                        text: document.body.innerText,
                    })"""
                )
        finally:
            browser.close()
    assert dialogs == []
    for name, s in seen.items():
        assert not str(s["name"]).startswith("xss"), (name, s["name"])
        assert s["inline"] == 0 and s["injected"] == 0, (name, s)
    # the hostile values are shown as text, where the page shows them
    assert SCRIPT_PAYLOAD in seen["index.html"]["text"]
    assert any(XSS_NAME in s["text"] for name, s in seen.items() if name.startswith("clusters/"))
    assert outside == []
