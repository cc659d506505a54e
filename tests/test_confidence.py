"""ScoreCalibrator: percentiles of the catalogue's own nearest-neighbour scores."""

from __future__ import annotations

import json

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError, ModelFileError, NotFittedError
from varsitysrch._confidence import (
    CUTOFF,
    NO_CLOSE_MATCH,
    VERY_SIMILAR,
    WORDS,
    ScoreCalibrator,
    fit_confidence,
    match_words,
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
    assert cal.cutoff_score_ == pytest.approx(cal.score_at(CUTOFF))
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
    assert match_words([0.9, VERY_SIMILAR, 0.2, CUTOFF, CUTOFF / 2, 0.0]) == [
        WORDS[0],
        WORDS[0],
        WORDS[1],
        WORDS[1],
        WORDS[2],
        WORDS[2],
    ]
    cal = fit_confidence(_clusters(200, 0))
    assert cal.close([CUTOFF, CUTOFF - 1e-9]).tolist() == [True, False]
    assert cal.words(0.7) == ["very similar"]
    assert NO_CLOSE_MATCH == "no close match"


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
