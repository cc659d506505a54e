"""Choosing k: get_optimal_num_clusters / _choose_k on generated blobs with known answers."""

from __future__ import annotations

import csv
import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from conftest import CLOTHING
from varsitysrch import _selectk
from varsitysrch._errors import InvalidArgumentError
from varsitysrch._pca import apply_pca, fit_pca
from varsitysrch._selectk import (
    _DEFAULT_PLOT,
    _SIL_DIMS,
    _SIL_TIE,
    _SIL_WEAK,
    KSelection,
    _choose_k,
    _chord_knee,
    _recommend,
    _scores,
    get_optimal_num_clusters,
)
from varsitysrch._store import FeatureStore

REPO = Path(__file__).resolve().parents[1]
FAST = dict(show_progress=False, n_queries=200)


def blobs(n: int, dim: int, k: int, std: float, seed: int, sizes: list[int] | None = None) -> np.ndarray:
    from sklearn.datasets import make_blobs

    X, _ = make_blobs(
        n_samples=sizes if sizes is not None else n,
        n_features=dim,
        centers=None if sizes is not None else k,
        center_box=(-10, 10),
        cluster_std=std,
        random_state=seed,
    )
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


CONFIGS = {
    # name: (X, true k, max_clusters, n_components)
    "3 blobs, 8 dims": (lambda: blobs(600, 8, 3, 1.0, 3), 3, 8, None),
    "6 unequal blobs, 32 dims": (
        lambda: blobs(0, 32, 6, 2.0, 6, sizes=[60, 120, 150, 200, 250, 400]),
        6,
        12,
        None,
    ),
    "10 blobs, 64 dims, PCA 12": (lambda: blobs(1500, 64, 10, 2.5, 10), 10, 15, 12),
}


@pytest.fixture(scope="module")
def results() -> dict[str, tuple[KSelection, np.ndarray]]:
    out = {}
    for name, (make, _k, kmax, nc) in CONFIGS.items():
        X = make()
        out[name] = (_choose_k(X, kmax, nc, **FAST), X)  # type: ignore[arg-type]
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
def test_recommends_the_true_number_of_blobs(
    name: str, results: dict[str, tuple[KSelection, np.ndarray]]
) -> None:
    r, X = results[name]
    _make, true_k, kmax, nc = CONFIGS[name]
    assert r.recommended_k == true_k, r.summary()
    assert r.best_silhouette_k == true_k
    assert r.knee_k == true_k
    assert r.ks == tuple(range(2, kmax + 1))
    assert len(r.inertia) == len(r.silhouette) == len(r.davies_bouldin) == len(r.ks)
    assert r.n_images == len(X) and r.dim == X.shape[1] and r.n_components == nc
    assert r.method == "fast" and r.knee_method == "kneed"
    assert true_k in r.confirmed_ks
    assert "silhouette" in r.rule and r.seconds > 0
    # Davies-Bouldin is lowest at the true k on clean blobs too
    assert r.ks[int(np.argmin(r.davies_bouldin))] == true_k


def test_fast_matches_exhaustive() -> None:
    X = blobs(0, 32, 6, 2.0, 6, sizes=[60, 120, 150, 200, 250, 400])
    fast = _choose_k(X, 10, method="fast", sample_size=300, **FAST)  # type: ignore[arg-type]
    ex = _choose_k(X, 10, method="exhaustive", **FAST)  # type: ignore[arg-type]
    assert fast.recommended_k == ex.recommended_k == 6
    assert ex.silhouette_sample == len(X) and fast.silhouette_sample == 300
    assert ex.confirmed_ks == ()
    i = fast.ks.index(6)
    # same clustering at the answer: inertia equal, silhouette close despite the 300-image sample
    assert fast.inertia[i] == pytest.approx(ex.inertia[i], rel=1e-4)
    assert fast.silhouette[i] == pytest.approx(ex.silhouette[i], abs=0.03)


def test_silhouette_and_davies_bouldin_are_sklearns(monkeypatch: pytest.MonkeyPatch) -> None:
    """The one-pass scores equal sklearn's silhouette and Davies-Bouldin, whatever the block size."""
    from sklearn.metrics import davies_bouldin_score, silhouette_samples, silhouette_score

    rng = np.random.default_rng(0)
    X = rng.standard_normal((300, 12)).astype(np.float32)
    labels = [rng.integers(0, k, len(X)) for k in (2, 5, 9)]
    labels[1][labels[1] == 4] = 3
    labels[1][0] = 4  # a cluster of one, whose silhouette is 0
    labels[2][labels[2] == 3] = 8  # an empty cluster id
    labels.append(np.arange(len(X)) % 299)  # 299 clusters of 300 rows: the most the silhouette allows
    sil, se, dbi = _scores(X, labels)
    monkeypatch.setattr(_selectk, "_DIST_BLOCK_ELEMS", 7 * len(X))  # blocks of 7 rows, a short last one
    np.testing.assert_allclose(_scores(X, labels)[0], sil, rtol=0, atol=2e-5)
    # float32 sums of 300 distances: relative error <= 300 * 6e-8 (2e-5) at worst, typically far less
    for lab, s, e, d in zip(labels, sil, se, dbi, strict=True):
        assert s == pytest.approx(silhouette_score(X, lab, metric="euclidean"), abs=2e-5)
        assert e == pytest.approx(np.std(silhouette_samples(X, lab)) / np.sqrt(len(X)), abs=2e-5)
        assert d == pytest.approx(davies_bouldin_score(X, lab), rel=1e-6)  # float32 data
    one = _scores(X, [np.zeros(len(X), dtype=np.int64), np.arange(len(X))])  # 1 and m clusters
    assert np.isnan(np.concatenate(one)).all()  # undefined, not an error


def test_exhaustive_scores_equal_sklearn_on_the_true_clustering() -> None:
    """On clean blobs the clustering at the true k is unique: every score must be sklearn's, in the
    score space (the top _SIL_DIMS principal directions, rows re-normalised)."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import davies_bouldin_score, silhouette_score

    X = blobs(0, 32, 6, 2.0, 6, sizes=[60, 120, 150, 200, 250, 400])
    r = _choose_k(X, 8, method="exhaustive", retrieval=False, show_progress=False)
    assert r.score_dims == _SIL_DIMS == 16
    i = r.ks.index(6)
    km = KMeans(6, n_init=5, random_state=1).fit(X)
    Zs = apply_pca(X, *fit_pca(X, _SIL_DIMS, random_state=0))
    assert r.silhouette[i] == pytest.approx(silhouette_score(Zs, km.labels_), abs=2e-5)
    assert r.davies_bouldin[i] == pytest.approx(davies_bouldin_score(Zs, km.labels_), rel=1e-5)
    assert r.inertia[i] == pytest.approx(km.inertia_, rel=1e-4)  # the inertia stays in the analysis space


def test_the_recommendation_rule() -> None:
    ks = list(range(2, 9))
    # a clear best silhouette wins, wherever the knee is
    c = _recommend(ks, np.array([0.2, 0.3, 0.5, 0.35, 0.3, 0.25, 0.2]), knee=6)
    assert (c.best_k, c.recommended_k, c.tied_ks, c.tie_band) == (4, 4, (4,), _SIL_TIE)
    # practically tied (within 0.002): the one nearest the knee
    c = _recommend(ks, np.array([0.2, 0.3, 0.5, 0.4995, 0.3, 0.25, 0.2]), knee=6)
    assert (c.best_k, c.recommended_k) == (4, 5) and "[4, 5]" in c.rule and "knee" in c.rule
    # flat silhouette (range < 0.02): the knee
    c = _recommend(ks, np.array([0.05, 0.06, 0.055, 0.058, 0.052, 0.05, 0.051]), knee=5)
    assert (c.best_k, c.recommended_k) == (3, 5) and "flat" in c.rule
    # no silhouette at all (NaN): the knee
    assert _recommend(ks, np.full(7, np.nan), knee=4).recommended_k == 4
    # the chord knee of an elbow curve
    assert _chord_knee(ks, np.array([100.0, 60, 20, 18, 16, 14, 12])) == 4


def test_the_tie_band_is_the_standard_error_of_the_best_silhouette() -> None:
    """Differences below the best silhouette's standard error (few images) do not decide; the knee does."""
    ks = list(range(2, 9))
    sil = np.array([0.15, 0.16, 0.18, 0.172, 0.171, 0.16, 0.15])
    se = np.full(7, 0.0104)
    c = _recommend(ks, sil, knee=7, se=se)
    assert c.tie_band == 0.010 and c.tied_ks == (4, 5, 6) and c.recommended_k == 6
    assert "within 0.010 of it (its standard error): [4, 5, 6]" in c.rule
    # a small standard error (many images) never narrows the band below _SIL_TIE
    c = _recommend(ks, sil, knee=7, se=np.full(7, 0.0004))
    assert c.tie_band == _SIL_TIE and c.tied_ks == (4,) and c.recommended_k == 4


def test_decisions_and_messages_use_the_same_rounded_numbers() -> None:
    """A message never says "0.250 is below 0.25" or "0.020 < 0.02": decisions use the printed values."""
    ks = list(range(2, 9))
    # unrounded 0.5004 - 0.4983 = 0.0021 > 0.002, but printed 0.500 and 0.498 are 0.002 apart: tied
    c = _recommend(ks, np.array([0.2, 0.3, 0.5004, 0.4983, 0.3, 0.25, 0.2]), knee=6)
    assert c.tied_ks == (4, 5) and c.recommended_k == 5
    # unrounded range 0.0198 < 0.02, printed 0.070 - 0.050 = 0.020: not flat, and not said to be
    c = _recommend(ks, np.array([0.0502, 0.0699, 0.055, 0.058, 0.052, 0.06, 0.051]), knee=5)
    assert "flat" not in c.rule and c.recommended_k == 3
    r = _choose_k(blobs(300, 8, 3, 1.0, 3), 8, retrieval=False, **FAST)  # type: ignore[arg-type]
    for best in np.arange(0.2440, 0.2560, 0.0001):
        sil = np.array([best - 0.05, best, best - 0.03, best - 0.04, best - 0.06, best - 0.07, best - 0.08])
        shown = f"{best:.3f}"
        weak = float(shown) < _SIL_WEAK
        for n_images in (None, 1000):  # without and with the catalogue-size floor
            c = _recommend(ks, sil, knee=3, n_images=n_images)
            assert ("weak cluster structure" in c.rule) == weak, (shown, c.rule)
            if weak:
                assert f"the best silhouette {shown}" in c.rule and f"is below {_SIL_WEAK}" in c.rule
            else:
                assert f"{shown} is below" not in c.rule
            w = _selectk.dataclasses.replace(r, silhouette=tuple(sil), rule=c.rule)
            assert w.weak_structure == weak  # the plot's warning follows the same number
            assert ("weak cluster structure" in w.explanation) == weak


def test_one_explanation_everywhere(results: dict[str, tuple[KSelection, np.ndarray]]) -> None:
    """str(), summary(), the plot's caption and the JSON all carry ``explanation``, weak note included."""
    X = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)
    for r in (results["3 blobs, 8 dims"][0], _choose_k(X, 8, **FAST)):  # type: ignore[arg-type]
        line = r.explanation
        assert "\n" not in line and line.startswith(f"k={r.recommended_k}: {r.rule}")
        assert ("weak cluster structure" in line) == r.weak_structure
        assert str(r) == line and r.summary().splitlines()[-1] == f"recommended {line}"
        assert line in _texts(r.plot()).replace("\n", " ")
        assert r.to_dict()["explanation"] == line


def _texts(fig) -> str:  # type: ignore[no-untyped-def]
    parts = [t.get_text() for t in fig.texts]
    if fig._supxlabel is not None:
        parts.append(fig._supxlabel.get_text())
    if fig._suptitle is not None:
        parts.append(fig._suptitle.get_text())
    for ax in fig.axes:
        parts += [ax.get_title(), ax.get_xlabel(), ax.get_ylabel()]
        parts += [t.get_text() for t in ax.texts]
        legend = ax.get_legend()
        if legend is not None:
            parts += [t.get_text() for t in legend.get_texts()]
    return "\n".join(parts)


def test_plot_explains_the_recommendation(
    tmp_path: Path, results: dict[str, tuple[KSelection, np.ndarray]]
) -> None:
    from PIL import Image

    r, _X = results["6 unequal blobs, 32 dims"]
    png = tmp_path / "plots" / "k.png"
    fig = r.plot(png)
    sil_ax, inertia_ax, ret_ax = fig.axes
    assert "silhouette" in sil_ax.get_title().lower()
    assert "inertia" in inertia_ax.get_title().lower()
    assert "recall@10" in ret_ax.get_ylabel() and "scanned" in ret_ax.get_xlabel()
    # the tie band is a shaded horizontal span [best - _SIL_TIE, best] in the silhouette panel
    best = max(r.silhouette)
    spans = [p for p in sil_ax.patches if p.get_label().startswith("tie band")]
    assert len(spans) == 1
    ys = spans[0].get_path().transformed(spans[0].get_patch_transform()).vertices[:, 1]
    assert min(ys) == pytest.approx(best - _SIL_TIE) and max(ys) == pytest.approx(best)
    # the recommended k is marked in the silhouette panel, the knee in the inertia panel
    rec = [ln for ln in sil_ax.lines if ln.get_label() == f"recommended k={r.recommended_k}"]
    assert rec and list(rec[0].get_xdata()) == [r.recommended_k]
    knee = [ln for ln in inertia_ax.lines if ln.get_label().startswith(f"knee k={r.knee_k}")]
    assert knee and list(knee[0].get_xdata()) == [r.knee_k]
    # one line per nprobe in the retrieval panel, each through one point per k
    curves = [ln for ln in ret_ax.lines if ln.get_label().startswith("nprobe=")]
    assert [c.get_label() for c in curves] == ["nprobe=1", "nprobe=2", "nprobe=4"]
    assert all(len(c.get_xdata()) == len(r.ks) for c in curves)
    # value axes from zero
    for ax in fig.axes:
        assert ax.get_ylim()[0] <= 0.0 and ax.get_xlim()[0] == 0.0
    text = _texts(fig)
    assert f"recommended k = {r.recommended_k}" in text and r.explanation in text.replace("\n", " ")
    assert "weak structure" not in text  # silhouette 0.6+: no warning
    with Image.open(png) as im:
        im.verify()
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size == (1620, 500)
    assert not list(png.parent.glob(".*.tmp"))  # written atomically, no leftovers
    with pytest.raises(InvalidArgumentError, match="plot_path"):
        r.plot(tmp_path / "k.unknown")


def test_plot_without_retrieval_has_two_panels(results: dict[str, tuple[KSelection, np.ndarray]]) -> None:
    import dataclasses

    r, _X = results["3 blobs, 8 dims"]
    assert len(r.plot().axes) == 3
    assert len(dataclasses.replace(r, retrieval=None).plot().axes) == 2


def test_weak_structure_is_said_in_the_message_and_the_plot() -> None:
    X = np.random.default_rng(1).standard_normal((400, 16)).astype(np.float32)  # no clusters at all
    r = _choose_k(X, 8, **FAST)  # type: ignore[arg-type]
    assert r.weak_structure and max(r.silhouette) < _SIL_WEAK
    assert "weak cluster structure" in str(r) and "weak cluster structure" in r.summary()
    fig = r.plot()
    assert "weak structure" in _texts(fig)
    sil_ax = fig.axes[0]
    assert sil_ax.get_ylim()[0] == 0.0  # silhouettes > 0 here: the axis still starts at zero
    strong, _X = _choose_k(blobs(600, 8, 3, 1.0, 3), 6, **FAST), None  # type: ignore[arg-type]
    assert not strong.weak_structure and "weak" not in str(strong)


def test_scores_csv_and_json(tmp_path: Path, results: dict[str, tuple[KSelection, np.ndarray]]) -> None:
    r, _X = results["6 unequal blobs, 32 dims"]
    csv_path, json_path = r.write_scores(tmp_path / "scores.csv")
    assert csv_path == tmp_path / "scores.csv" and json_path == tmp_path / "scores.json"
    with open(csv_path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["k"]) for row in rows] == list(r.ks)
    assert {"inertia", "silhouette", "davies_bouldin", "recall_at_10_nprobe1", "scanned_nprobe4"} <= set(
        rows[0]
    )
    assert float(rows[4]["silhouette"]) == pytest.approx(r.silhouette[4])
    doc = json.loads(json_path.read_text(encoding="utf-8"))
    assert doc["recommended_k"] == 6 and doc["ks"] == list(r.ks) and doc["rule"] == r.rule
    assert doc["retrieval"]["nprobe"] == [1, 2, 4]
    assert json.loads(json.dumps(r.to_dict())) == doc
    assert "recommended k=6: " in r.summary()


def test_retrieval_scores_are_consistent(results: dict[str, tuple[KSelection, np.ndarray]]) -> None:
    r, _X = results["6 unequal blobs, 32 dims"]
    ret = r.retrieval
    assert ret is not None and ret.nprobe == (1, 2, 4) and ret.n_queries == 200 and ret.top == 10
    for i, k in enumerate(r.ks):
        rec = [ret.recall_at_10[p][i] for p in ret.nprobe]
        scan = [ret.scanned_fraction[p][i] for p in ret.nprobe]
        assert all(0 <= v <= 1 for v in rec + scan)
        assert rec == sorted(rec) and scan == sorted(scan)
        for p in ret.nprobe:
            if p >= k:
                assert ret.recall_at_10[p][i] == 1.0 and ret.scanned_fraction[p][i] == pytest.approx(1.0)
    i6 = r.ks.index(6)
    assert ret.recall_at_10[1][i6] > 0.95  # clean blobs: neighbours share the query's cluster
    assert ret.scanned_fraction[1][i6] < 0.5


def test_folder_with_store_files(tmp_path: Path) -> None:
    X = blobs(600, 8, 3, 1.0, 3)
    folder = tmp_path / "features"
    FeatureStore.write(
        folder, [f"img{i:04d}.jpg" for i in range(len(X))], X, extractor={"name": "test", "dim": 8}
    )
    r = get_optimal_num_clusters(
        folder, 6, plot_path=tmp_path / "k.png", scores_path=tmp_path / "k_scores", retrieval=False, **FAST
    )
    assert r.recommended_k == 3 and r.retrieval is None and r.plot_path == tmp_path / "k.png"
    assert len(r.plot().axes) == 2
    assert (tmp_path / "k.png").stat().st_size > 0
    assert (tmp_path / "k_scores.csv").exists() and (tmp_path / "k_scores.json").exists()
    with open(tmp_path / "k_scores.csv", newline="", encoding="utf-8") as f:
        assert "recall_at_10_nprobe1" not in next(csv.reader(f))


def _store(folder: Path, X: np.ndarray) -> Path:
    FeatureStore.write(
        folder, [f"img{i:04d}.jpg" for i in range(len(X))], X, extractor={"name": "test", "dim": X.shape[1]}
    )
    return folder


def test_default_call_saves_the_plot_in_the_working_folder_and_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = _store(tmp_path / "features", blobs(600, 8, 3, 1.0, 3))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("VARSITYSRCH_PROGRESS", "1")  # bars as on a terminal (capsys is none)
    r = get_optimal_num_clusters(folder, 6)
    out, err = capsys.readouterr()
    assert r.recommended_k == 3
    assert (work / _DEFAULT_PLOT).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert _DEFAULT_PLOT == "optimal_clusters.png" and r.plot_path == Path(_DEFAULT_PLOT)
    lines = out.splitlines()
    assert len(lines) == 1 and lines[0] == str(r)
    assert lines[0].startswith("k=3: highest silhouette") and "knee" in lines[0]
    assert lines[0].endswith("plot saved to optimal_clusters.png")
    assert "choose k" in err  # the progress bar follows verbose


@pytest.mark.parametrize("off", [None, False])
def test_plot_path_none_or_false_writes_no_plot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], off: object
) -> None:
    folder = _store(tmp_path / "features", blobs(300, 8, 3, 1.0, 3))
    monkeypatch.chdir(tmp_path)
    r = get_optimal_num_clusters(folder, 5, plot_path=off, retrieval=False, show_progress=False)  # type: ignore[arg-type]
    assert r.plot_path is None and not list(tmp_path.glob("*.png"))
    out = capsys.readouterr().out
    assert out.startswith("k=3: ") and "plot" not in out


def test_verbose_false_is_silent_but_logs(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    folder = _store(tmp_path / "features", blobs(300, 8, 3, 1.0, 3))
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="varsitysrch._selectk"):
        r = get_optimal_num_clusters(folder, 5, verbose=False, retrieval=False)
    assert capsys.readouterr() == ("", "")  # neither the line nor the progress bar
    assert str(r) in [rec.getMessage() for rec in caplog.records]
    assert (tmp_path / _DEFAULT_PLOT).exists()


def test_the_originals_call_on_its_per_image_npy_folder(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``get_optimal_num_clusters(features_folder, max_clusters=100, n_components=10)`` as example.py does."""
    X = blobs(60, 16, 3, 1.0, 4)
    folder = tmp_path / "test_features"
    folder.mkdir()
    for i, x in enumerate(X):  # the original saved one [1, dim] array per image
        np.save(folder / f"img{i:03d}.npy", x[None, :])
    monkeypatch.chdir(tmp_path)
    r = get_optimal_num_clusters(str(folder), max_clusters=100, n_components=10)
    out = capsys.readouterr().out.splitlines()
    assert r.ks == tuple(range(2, 60)) and r.n_components == 10 and r.recommended_k == 3
    assert len(out) == 2 and "max_clusters=100" in out[0] and "2..59" in out[0]
    assert out[1].startswith("k=3: ") and out[1].endswith("plot saved to optimal_clusters.png")
    assert (tmp_path / "optimal_clusters.png").stat().st_size > 0
    # silenced, the lowered max_clusters is still a warning in the log
    with caplog.at_level(logging.INFO, logger="varsitysrch._selectk"):
        get_optimal_num_clusters(folder, 100, 10, verbose=False, plot_path=None, retrieval=False)
    assert capsys.readouterr() == ("", "")
    warned = [
        r for r in caplog.records if r.levelno == logging.WARNING and "max_clusters=100" in r.getMessage()
    ]
    assert len(warned) == 1


class _Shell:
    def __init__(self, kernel: object) -> None:
        self.kernel = kernel


def _fake_ipython(monkeypatch: pytest.MonkeyPatch, shell: _Shell | None) -> list[object]:
    import types

    shown: list[object] = []
    ipython = types.ModuleType("IPython")
    ipython.get_ipython = lambda: shell  # type: ignore[attr-defined]
    display_mod = types.ModuleType("IPython.display")
    display_mod.display = shown.append  # type: ignore[attr-defined]
    ipython.display = display_mod  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    monkeypatch.setitem(sys.modules, "IPython.display", display_mod)
    return shown


@pytest.mark.parametrize(
    ("shell", "show", "expect_shown"),
    [
        (_Shell(kernel=object()), None, True),  # a notebook kernel: shown inline by default
        (_Shell(kernel=object()), False, False),
        (_Shell(kernel=None), None, False),  # terminal IPython: only on request
        (_Shell(kernel=None), True, True),
        (None, None, False),  # plain Python with IPython installed
    ],
)
def test_shown_inline_in_a_notebook(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    shell: _Shell | None,
    show: bool | None,
    expect_shown: bool,
) -> None:
    from matplotlib.figure import Figure

    shown = _fake_ipython(monkeypatch, shell)
    folder = _store(tmp_path / "features", blobs(300, 8, 3, 1.0, 3))
    monkeypatch.chdir(tmp_path)
    get_optimal_num_clusters(folder, 5, show=show, retrieval=False, verbose=False)
    assert len(shown) == int(expect_shown)
    if shown:
        assert isinstance(shown[0], Figure) and len(shown[0].axes) == 2


def test_str_is_one_line_with_the_recommendation(results: dict[str, tuple[KSelection, np.ndarray]]) -> None:
    r, _X = results["10 blobs, 64 dims, PCA 12"]
    assert str(r) == f"k=10: {r.rule}" and "\n" not in str(r)
    assert str(_selectk.dataclasses.replace(r, plot_path=Path("x.png"))).endswith("; plot saved to x.png")


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"max_clusters": 1}, r"max_clusters must be .*\[2, n_images - 1\] = \[2, 39\]; got 1"),
        ({"max_clusters": 40}, r"max_clusters .*got 40"),
        ({"max_clusters": 2.5}, r"max_clusters .*got 2\.5"),
        ({"n_components": 9}, r"n_components must be .*\[2, 8\] \(dim = 8, n_images = 40\); got 9"),
        ({"n_components": 1}, r"n_components .*got 1"),
        ({"method": "quick"}, r"method must be 'fast' or 'exhaustive'; got 'quick'"),
        ({"sample_size": 3}, r"sample_size must be .*>= max_clusters \+ 1 = 6; got 3"),
        ({"n_init": 0}, r"n_init must be an integer >= 1; got 0"),
        ({"n_queries": 0}, r"n_queries .*got 0"),
        ({"random_state": -1}, r"random_state .*got -1"),
    ],
)
def test_validation_names_parameter_and_value(kwargs: dict, pattern: str) -> None:
    X = blobs(40, 8, 2, 1.0, 0)
    args = {"max_clusters": 5, **kwargs}
    with pytest.raises(InvalidArgumentError, match=pattern):
        _choose_k(X, **args, show_progress=False)


def test_validation_of_the_matrix() -> None:
    with pytest.raises(InvalidArgumentError, match="2-D"):
        _choose_k(np.zeros(10), 2)
    with pytest.raises(InvalidArgumentError, match="at least 3 images"):
        _choose_k(np.eye(2, 4), 2)
    X = blobs(40, 8, 2, 1.0, 0)
    X[3, 2] = np.nan
    with pytest.raises(InvalidArgumentError, match="finite"):
        _choose_k(X, 3)
    with pytest.raises(ValueError):  # InvalidArgumentError is a ValueError too
        _choose_k(blobs(40, 8, 2, 1.0, 0), 40)


def test_pca_helpers_are_deterministic_and_normalised() -> None:
    X = blobs(500, 64, 10, 2.5, 10)
    mean, comps = fit_pca(X, 12, random_state=0)
    mean2, comps2 = fit_pca(X, 12, random_state=0)
    assert mean.dtype == comps.dtype == np.float32
    assert mean.shape == (64,) and comps.shape == (12, 64)
    np.testing.assert_array_equal(comps, comps2)
    np.testing.assert_array_equal(mean, mean2)
    Z = apply_pca(X, mean, comps)
    assert Z.dtype == np.float32 and Z.shape == (500, 12)
    np.testing.assert_allclose(np.linalg.norm(Z, axis=1), 1.0, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="n_components"):
        fit_pca(X, 65)
    with pytest.raises(InvalidArgumentError, match="do not match"):
        apply_pca(X[:, :10], mean, comps)


def test_where_kneed_finds_no_knee_the_chord_rule_does(monkeypatch: pytest.MonkeyPatch) -> None:
    import kneed

    class NoKnee:
        knee = None

        def __init__(self, *args: object, **kwargs: object) -> None:
            pass

    monkeypatch.setattr(kneed, "KneeLocator", NoKnee)
    r = _choose_k(blobs(600, 8, 3, 1.0, 3), 8, retrieval=False, **FAST)  # type: ignore[arg-type]
    assert r.knee_method == "chord" and r.knee_k == 3 and r.recommended_k == 3


def test_show_outside_a_notebook_warns_and_returns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="varsitysrch._selectk"):
        r = _choose_k(blobs(300, 8, 3, 1.0, 3), 5, show=True, retrieval=False, **FAST)  # type: ignore[arg-type]
    assert r.recommended_k == 3
    assert any("notebook" in rec.getMessage() for rec in caplog.records)


def test_progress_bar_goes_to_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _choose_k(blobs(300, 8, 3, 1.0, 3), 5, retrieval=False, show_progress=True)
    assert capsys.readouterr().err == ""  # stderr is not a terminal here: no bar (no log full of bars)
    monkeypatch.setenv("VARSITYSRCH_PROGRESS", "1")  # as on a terminal
    _choose_k(blobs(300, 8, 3, 1.0, 3), 5, retrieval=False, show_progress=True)
    assert "choose k" in capsys.readouterr().err
    _choose_k(blobs(300, 8, 3, 1.0, 3), 5, retrieval=False, show_progress=False)
    assert capsys.readouterr().err == ""


def _run(code: str, tmp_path: Path, env_drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in env_drop}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_headless_png_without_display_or_backend(tmp_path: Path) -> None:
    code = """
        import sys, numpy as np
        import varsitysrch  # whatever the package itself imports
        before = set(sys.modules)
        import varsitysrch._selectk as s
        new = {m.split(".")[0] for m in set(sys.modules) - before}
        heavy = {"sklearn", "matplotlib", "kneed", "faiss", "scipy", "tqdm"} & new
        assert not heavy, heavy  # heavy imports happen inside the functions
        rng = np.random.default_rng(0)
        X = np.concatenate([rng.normal(c, 0.05, (100, 6)) for c in np.eye(6)[:3] * 3])
        r = s._choose_k(X, 5, plot_path="k.png", show_progress=False)
        print(r.recommended_k)
        s.get_optimal_num_clusters  # the store-folder entry point draws the same way
        assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
        assert "matplotlib.figure" in sys.modules
    """
    res = _run(code, tmp_path, env_drop=("DISPLAY", "MPLBACKEND", "WAYLAND_DISPLAY"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "3"
    assert (tmp_path / "k.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# --------------------------------------------------------------------------- useful on real catalogues
def classes(
    n_per: int, k: int, dim: int, groups: int, sep_group: float, sep_class: float, seed: int
) -> np.ndarray:
    """``k`` classes of ``n_per`` unit rows, their centres spread over ``groups`` super-groups (shoes vs
    clothes), in ``dim`` dims of isotropic noise (norm 2): the shape of CNN features of a catalogue."""
    rng = np.random.default_rng(seed)
    g = rng.standard_normal((groups, dim))
    g *= sep_group / np.linalg.norm(g, axis=1, keepdims=True)
    c = rng.standard_normal((k, dim))
    c *= sep_class / np.linalg.norm(c, axis=1, keepdims=True)
    c += g[np.arange(k) % groups]
    X = c[np.repeat(np.arange(k), n_per)] + rng.standard_normal((n_per * k, dim)) * 2.0 / np.sqrt(dim)
    return (X / np.linalg.norm(X, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("seed", [0, 1])
def test_ten_classes_in_two_groups_in_many_dims_give_ten(seed: int) -> None:
    """Issue 22: in 512 noisy dims the raw-space silhouette was highest at k=2 (the two groups) and the
    default recommended 2; scored in the top principal directions the ten classes stand out."""
    X = classes(30, 10, 512, 2, 3.0, 1.5, seed)
    r = _choose_k(X, 30, retrieval=False, **FAST)  # type: ignore[arg-type]
    assert r.score_dims == _SIL_DIMS and r.min_k == 2  # a clear structure: no catalogue-size floor
    assert r.recommended_k == r.best_silhouette_k == 10, r.explanation
    assert r.best_silhouette >= _selectk._SIL_CLEAR


@pytest.mark.parametrize("seed", [0, 1])
def test_loose_groups_of_many_classes_are_not_two_clusters(seed: int) -> None:
    """Two loose groups of 24 classes (grocery: packages vs produce): the best silhouette, under 0.5, is
    the split in two, useless for 1,200 images; from _min_k_for(1,200) = 10 on, the 24 classes win."""
    X = classes(50, 24, 256, 2, 1.0, 0.8, seed)
    r = _choose_k(X, 30, retrieval=False, **FAST)  # type: ignore[arg-type]
    assert r.best_silhouette_k == 2 and r.best_silhouette < _selectk._SIL_CLEAR
    assert r.min_k == _selectk._min_k_for(1200) == 10
    assert r.recommended_k == 24, r.explanation
    assert r.explanation.startswith(f"k=24: the best silhouette {r.best_silhouette:.3f} (k=2) is under 0.5")


def test_min_k_for_keeps_the_search_within_twice_its_least_cost() -> None:
    """k + n/k distance computations per query: the floor is the first k within twice the least, 2 sqrt(n)."""
    for n in (3, 50, 300, 2640, 3781, 20_000, 1_000_000):
        k = _selectk._min_k_for(n)
        least = 2 * np.sqrt(n)
        assert k + n / k <= 2 * least or k == 2
        if k > 2:
            assert (k - 1) + n / (k - 1) > 2 * least
    assert [_selectk._min_k_for(n) for n in (300, 2640, 20_000)] == [5, 14, 38]
    # a clear structure (best silhouette >= 0.5) is recommended whatever the catalogue size
    ks = list(range(2, 31))
    sil = np.array([0.7] + [0.3] * 28)
    assert _recommend(ks, sil, knee=5, n_images=100_000).recommended_k == 2
    # below 0.5 the floor applies; above max_clusters it is max_clusters
    sil = np.array([0.45] + [0.3] * 28)
    c = _recommend(ks, sil, knee=5, n_images=100_000)
    assert c.min_k == c.recommended_k == 30 and "at least k=30" in c.rule


@pytest.mark.slow
@pytest.mark.skipif(not (CLOTHING / "manifest.csv").exists(), reason=f"{CLOTHING} is absent")
def test_300_clothing_photos_of_10_classes(tmp_path: Path) -> None:
    """Issue 22: the default analysis of 300 photos of 10 clothing classes recommended k=2."""
    import random
    import shutil

    from varsitysrch import extract_features

    with open(CLOTHING / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    by_label: dict[str, list[str]] = {}
    for row in rows:
        by_label.setdefault(row["label"], []).append(row["path"])
    assert len(by_label) == 10
    rnd = random.Random(0)
    for label in sorted(by_label):
        for path in rnd.sample(by_label[label], 30):
            (tmp_path / "imgs" / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(CLOTHING / path, tmp_path / "imgs" / path)
    extract_features(tmp_path / "imgs", tmp_path / "feat", show_progress=False)
    for n_components in (None, 10):  # the default, and the original package's own call
        r = get_optimal_num_clusters(tmp_path / "feat", 30, n_components, plot_path=None, verbose=False)
        assert r.n_images == 300
        assert 6 <= r.recommended_k <= 30, r.explanation
        assert ("weak cluster structure" in r.explanation) == r.weak_structure


def test_the_clusters_do_not_depend_on_the_retrieval_scores() -> None:
    """retrieval=False used to skip a random draw, so the sweep's warm starts differed and, on weak
    structure, so could the recommendation; now only the retrieval panel differs."""
    X = classes(30, 10, 64, 1, 0.0, 1.0, 0)
    a = _choose_k(X, 12, retrieval=True, **FAST)  # type: ignore[arg-type]
    b = _choose_k(X, 12, retrieval=False, **FAST)  # type: ignore[arg-type]
    assert a.inertia == b.inertia and a.silhouette == b.silhouette
    assert a.recommended_k == b.recommended_k and a.rule == b.rule
