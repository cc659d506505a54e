"""ScoreCalibrator: percentiles of the catalogue's own nearest-neighbour scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError, ModelFileError, NotFittedError
from varsitysrch._confidence import (
    _CUTOFF,
    _NO_CLOSE_MATCH,
    _VERY_SIMILAR,
    _WORDS,
    ScoreCalibrator,
    _match_words,
)
from varsitysrch._neighbours import exact_topk
from varsitysrch._store import normalize_rows


def _clusters(n: int, seed: int, dim: int = 32, k: int = 10, noise: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(123).standard_normal((k, dim))
    return normalize_rows(centres[rng.integers(0, k, n)] + noise * rng.standard_normal((n, dim)))


def test_confidence_is_a_monotone_map_into_unit_interval() -> None:
    cal = ScoreCalibrator(500).fit(_clusters(1000, 0))
    s = np.linspace(-1.0, 1.0, 401)
    c = cal.confidence(s)
    assert ((c >= 0) & (c <= 1)).all()
    assert (np.diff(c) >= -1e-12).all()
    assert c[0] == 0.0 and c[-1] == 1.0
    for level in (0.05, 0.25, 0.5, 0.9):
        assert cal.confidence(cal.score_at(level)) == pytest.approx(level, abs=0.011)
    assert cal.cutoff_score_ == pytest.approx(cal.score_at(_CUTOFF))
    assert cal.confidence(np.nan) == 0.0


def test_in_distribution_queries_pass_at_the_rate_the_cutoff_promises() -> None:
    """Fresh queries from the catalogue's distribution: about 1 - cutoff have a close best hit."""
    X = _clusters(3000, 0)
    cal = ScoreCalibrator(1500, cutoff=0.1).fit(X)
    Q = _clusters(1000, 1)
    best = exact_topk(Q, X, 1)[1][:, 0]
    rate = cal.close(cal.confidence(best)).mean()
    assert 0.85 <= rate <= 0.95
    far = normalize_rows(np.random.default_rng(5).standard_normal((300, 32)))  # not from the clusters
    far_best = exact_topk(far, X, 1)[1][:, 0]
    assert cal.close(cal.confidence(far_best)).mean() < 0.05


def test_ranking_space_finds_the_neighbour_and_x_scores_it() -> None:
    X = _clusters(400, 0)
    R = X[:, ::-1].copy()  # same geometry, other coordinates: same neighbours
    a = ScoreCalibrator(200).fit(X)
    b = ScoreCalibrator(200).fit(X, ranking=R)
    np.testing.assert_allclose(a.quantiles_, b.quantiles_, atol=1e-5)
    with pytest.raises(InvalidArgumentError, match="ranking"):
        ScoreCalibrator(200).fit(X, ranking=R[:10])


def test_words_and_close() -> None:
    assert _match_words([0.9, _VERY_SIMILAR, 0.2, _CUTOFF, _CUTOFF / 2, 0.0]) == [
        _WORDS[0],
        _WORDS[0],
        _WORDS[1],
        _WORDS[1],
        _WORDS[2],
        _WORDS[2],
    ]
    cal = ScoreCalibrator(2000, random_state=0).fit(_clusters(200, 0))  # the default cut-off
    assert cal.close([_CUTOFF, _CUTOFF - 1e-9]).tolist() == [True, False]
    assert cal.words(0.7) == ["very similar"]
    assert _NO_CLOSE_MATCH == "no close match"


def test_round_trip_through_json() -> None:
    cal = ScoreCalibrator(300, cutoff=0.1, very_similar=0.6).fit(_clusters(500, 0))
    d = json.loads(json.dumps(cal.to_dict()))
    back = ScoreCalibrator.from_dict(d)
    s = np.linspace(0, 1, 50)
    np.testing.assert_allclose(back.confidence(s), cal.confidence(s))
    assert (back.cutoff, back.very_similar, back.n_reference_) == (0.1, 0.6, 300)


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.pop("quantiles"),
        lambda d: d.update(format="other"),
        lambda d: d.update(quantiles=d["quantiles"][::-1]),
        lambda d: d.update(quantiles=[float("nan")] * len(d["levels"])),
        lambda d: d.update(levels=d["levels"][:-1]),
        lambda d: d.update(cutoff=2.0),
        lambda d: d.update(cutoff="high"),
        lambda d: d.update(very_similar=0.0),
    ],
)
def test_malformed_calibration_is_a_model_file_error(mutate: object) -> None:
    d = ScoreCalibrator(100).fit(_clusters(200, 0)).to_dict()
    mutate(d)  # type: ignore[operator]
    with pytest.raises(ModelFileError, match="confidence calibration"):
        ScoreCalibrator.from_dict(d)
    with pytest.raises(ModelFileError):
        ScoreCalibrator.from_dict("not a dict")


def test_flat_reference_distribution_from_exact_duplicates() -> None:
    X = np.repeat(_clusters(50, 0), 3, axis=0)  # every image has two exact copies: all NN scores 1
    cal = ScoreCalibrator(150).fit(X)
    assert cal.confidence(1.0) == 1.0
    assert cal.confidence(0.99) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_queries": 0}, "n_queries"),
        ({"n_queries": 2.5}, "n_queries"),
        ({"cutoff": 1.5}, "cutoff"),
        ({"cutoff": True}, "cutoff"),
        ({"very_similar": 0.01, "cutoff": 0.05}, "very_similar"),
        ({"n_quantiles": 1}, "n_quantiles"),
    ],
)
def test_bad_arguments(kwargs: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgumentError, match=match):
        ScoreCalibrator(**kwargs).fit(_clusters(20, 0))  # type: ignore[arg-type]


def test_not_fitted_and_too_small() -> None:
    with pytest.raises(NotFittedError):
        ScoreCalibrator().confidence(0.5)
    with pytest.raises(InvalidArgumentError, match="at least 2"):
        ScoreCalibrator().fit(_clusters(1, 0))


# ---------------------------------------------------------------- in the model file and the Searcher
def test_trained_model_carries_calibration_and_hits_carry_confidence(synth_model: tuple) -> None:  # type: ignore[type-arg]
    from varsitysrch import Searcher
    from varsitysrch._modelfile import load_model

    model, csv = synth_model
    cal = ScoreCalibrator.from_dict(load_model(model).config["confidence"])
    s = Searcher(model, csv)
    assert s.calibration is not None and s.calibration.n_reference_ == cal.n_reference_
    hits = s.search_id(s.ids[0], 5, include_self=False)
    for h in hits:
        assert h.confidence is not None and 0.0 <= h.confidence <= 1.0
        assert h.match in _WORDS and h.close == (h.confidence >= cal.cutoff)
        d = h.to_dict()
        assert {"confidence", "match", "close"} <= set(d)
    conf = [h.confidence for h in hits]
    # confidence follows the plain cosine of query and hit, which the ranking order need not follow exactly
    raw = [float(np.asarray(s.vectors[s.ids.index(h.image)], np.float32) @ s.vectors[0]) for h in hits]
    assert np.all(np.diff(conf)[np.diff(raw) <= 0] <= 1e-9)


def test_min_confidence_and_min_score_filter_and_renumber(synth_model: tuple) -> None:  # type: ignore[type-arg]
    from varsitysrch import Searcher

    model, csv = synth_model
    s = Searcher(model, csv)
    v = np.asarray(s.vectors[3], np.float32)
    every = s.search_vector(v, 10)
    cut = sorted(h.confidence for h in every)[5]  # type: ignore[type-var]
    kept = s.search_vector(v, 10, min_confidence=cut)
    assert [h.image for h in kept] == [h.image for h in every if h.confidence >= cut]  # type: ignore[operator]
    assert [h.rank for h in kept] == list(range(1, len(kept) + 1))
    floor = every[4].score
    by_score = s.search_vector(v, 10, min_score=floor)
    assert [h.image for h in by_score] == [h.image for h in every if h.score >= floor]
    far = -v  # the opposite of a catalogue image: nothing is close
    assert s.search_vector(far, 5, min_confidence=s.calibration.cutoff) == []  # type: ignore[union-attr]
    for bad in ({"min_confidence": 1.5}, {"min_confidence": "x"}, {"min_score": -2.0}, {"min_score": True}):
        with pytest.raises(InvalidArgumentError):
            s.search_vector(v, 5, **bad)  # type: ignore[arg-type]


def test_tampered_calibration_in_model_file_is_refused(synth_model: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def,type-arg]
    import zipfile

    from varsitysrch._modelfile import load_model

    model, _ = synth_model
    bad = tmp_path / "bad.vsm"
    with zipfile.ZipFile(model) as zin, zipfile.ZipFile(bad, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "model.json":
                cfg = json.loads(data)
                cfg["confidence"]["quantiles"] = cfg["confidence"]["quantiles"][::-1]
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    with pytest.raises(ModelFileError, match="confidence"):
        load_model(bad)


def test_model_without_calibration_still_searches(synth_model: tuple, tmp_path) -> None:  # type: ignore[no-untyped-def,type-arg]
    import zipfile

    from varsitysrch import Searcher

    model, _ = synth_model
    old = tmp_path / "old.vsm"
    with zipfile.ZipFile(model) as zin, zipfile.ZipFile(old, "w") as zout:
        for item in zin.infolist():
            data = zin.read(item.filename)
            if item.filename == "model.json":
                cfg = json.loads(data)
                del cfg["confidence"]
                data = json.dumps(cfg).encode()
            zout.writestr(item, data)
    s = Searcher(old)
    hits = s.search_vector(np.asarray(s.vectors[0], np.float32), 3)
    assert hits and all(h.confidence is None and h.match is None and h.close is None for h in hits)
    with pytest.raises(InvalidArgumentError, match="min_confidence"):
        s.search_vector(np.asarray(s.vectors[0], np.float32), 3, min_confidence=0.5)
    assert len(s.search_vector(np.asarray(s.vectors[0], np.float32), 3, min_score=0.0)) >= 1


def test_monotone_in_rank_is_the_least_squares_non_increasing_fit() -> None:
    from varsitysrch._confidence import monotone_in_rank

    assert monotone_in_rank([0.9, 0.5, 0.2]).tolist() == [0.9, 0.5, 0.2]  # already monotone: unchanged
    np.testing.assert_allclose(monotone_in_rank([0.2, 0.6, 0.1]), [0.4, 0.4, 0.1])  # a violation pooled
    np.testing.assert_allclose(monotone_in_rank([0.5, 0.1, 0.3, 0.8]), [0.5, 0.4, 0.4, 0.4])
    assert monotone_in_rank([]).shape == (0,)
    rng = np.random.default_rng(0)
    for _ in range(20):
        c = rng.random(15)
        m = monotone_in_rank(c)
        assert (np.diff(m) <= 1e-12).all() and m.sum() == pytest.approx(c.sum())  # mean kept
