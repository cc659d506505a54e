from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "catalog"
CLOTHING = Path(os.environ.get("VARSITYSRCH_CLOTHING", REPO.parent / "shared" / "data" / "clothing-small"))

_SESSION_CACHE: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Hermetic suite: one cache folder per test session, never the user's cache.

    Set here (not in a fixture) so that it is in ``os.environ`` before any test module is
    imported and so that CLI subprocesses inherit it.  ONNX graphs are built once per session
    (about a second each) and shared by all tests in it; a test that needs a pristine cache
    points ``VARSITYSRCH_CACHE`` at its own ``tmp_path``.
    """
    global _SESSION_CACHE
    import time

    # folders left by killed sessions (unconfigure never ran) are removed after a day
    for old in Path(tempfile.gettempdir()).glob("varsitysrch-test-cache-*"):
        with contextlib.suppress(OSError):
            if time.time() - old.stat().st_mtime > 86400:
                shutil.rmtree(old, ignore_errors=True)
    _SESSION_CACHE = Path(tempfile.mkdtemp(prefix="varsitysrch-test-cache-"))
    os.environ["VARSITYSRCH_CACHE"] = str(_SESSION_CACHE)


def pytest_unconfigure(config: pytest.Config) -> None:
    if _SESSION_CACHE is not None:
        shutil.rmtree(_SESSION_CACHE, ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _default_graph_built() -> None:
    """Build the default (fp32) graph once, into the session cache (about a second)."""
    from varsitysrch import get_extractor
    from varsitysrch._extractors import _onnx_model_bytes

    with contextlib.suppress(Exception):  # a missing weights package is the tests' business
        _onnx_model_bytes(get_extractor())


@pytest.fixture(scope="session")
def session_cache() -> Path:
    """The session's cache folder (``$VARSITYSRCH_CACHE`` for every test)."""
    assert _SESSION_CACHE is not None
    return _SESSION_CACHE


@pytest.fixture(scope="session")
def synth_catalogue(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from imagegen import make_synthetic_catalogue

    root = tmp_path_factory.mktemp("catalogue")
    labels = make_synthetic_catalogue(root, n_classes=4, per_class=6, size=96, seed=0)
    return root, labels


@pytest.fixture(scope="session")
def synth_store(
    synth_catalogue: tuple[Path, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    from varsitysrch import extract_features

    root, _ = synth_catalogue
    out = tmp_path_factory.mktemp("store") / "features"
    extract_features(root, out, show_progress=False)
    return out


@pytest.fixture(scope="session")
def synth_model(synth_store: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    from varsitysrch import train_clusters

    d = tmp_path_factory.mktemp("model")
    model, csv = d / "model.vsm", d / "clusters.csv"
    train_clusters(synth_store, model, csv, 4, show_progress=False)
    return model, csv
