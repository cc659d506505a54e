"""Real photos: a 500-image random sample of clothing-small (skips when the data is absent).

Measured with Lite0 and exact search, such samples give P@10 0.60-0.64 by class.
"""

from __future__ import annotations

import csv
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import CLOTHING
from varsitysrch import Searcher, extract_features, load_features, train_clusters

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (CLOTHING / "manifest.csv").exists(), reason=f"{CLOTHING} is absent"),
]


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path, Path, Path]:
    with open(CLOTHING / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    rows = random.Random(0).sample(rows, 500)
    work = tmp_path_factory.mktemp("clothing")
    root = work / "imgs"
    for r in rows:
        (root / r["path"]).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(CLOTHING / r["path"], root / r["path"])
    labels = {r["path"]: r["label"] for r in rows}
    extract_features(root, work / "feat", show_progress=False)
    train_clusters(work / "feat", work / "m.vsm", work / "c.csv", 10, show_progress=False)
    return root, labels, work / "feat", work / "m.vsm", work / "c.csv"


def _precision_at_10(ids: list[str], labels: dict[str, str], results: list[list[str]]) -> float:
    return float(
        np.mean([np.mean([labels[h] == labels[q] for h in res]) for q, res in zip(ids, results, strict=True)])
    )


def test_exact_and_default_search_quality(sample) -> None:
    _root, labels, feat, model, csv_path = sample
    ids, X, _ = load_features(feat)
    s = Searcher(model, csv_path)
    exact, default = [], []
    for j, q in enumerate(ids):
        exact.append([h.image for h in s.search_vector(X[j], 11, exact=True) if h.image != q][:10])
        default.append([h.image for h in s.search_vector(X[j], 11) if h.image != q][:10])
    p_exact = _precision_at_10(ids, labels, exact)
    p_default = _precision_at_10(ids, labels, default)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, default, strict=True)])
    assert p_exact >= 0.55, p_exact
    assert p_default >= p_exact - 0.02, (p_default, p_exact)
    assert recall >= 0.9, recall


def test_real_photo_query_round_trip(sample) -> None:
    root, labels, _, model, csv_path = sample
    q = sorted(labels)[0]
    hits = Searcher(model, csv_path).search(root / q, 5)
    assert hits[0].image == q and hits[0].score > 0.999
