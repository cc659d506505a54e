"""varsitysrch: product image search by K-means over CNN features, fast on a CPU.

The four steps::

    from varsitysrch import extract_features, get_optimal_num_clusters, train_clusters, search_similar_images

    extract_features("catalog/", "features/")
    get_optimal_num_clusters("features/", 30, 10, plot_path="k.png")
    train_clusters("features/", "model.vsm", "clusters.csv", num_clusters=20)
    hits = search_similar_images("query.jpg", "model.vsm", "clusters.csv", top_n=5)

Names are imported lazily (PEP 562), so ``import varsitysrch`` and the CLI's ``--help``
stay fast; the exception classes are plain imports.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import (
    FeatureStoreError,
    ImageError,
    IncompatibleError,
    IncompatibleFeaturesError,
    IncompatibleModelError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelFileError,
    NotFittedError,
    VarsitysrchError,
)
from ._version import __version__

if TYPE_CHECKING:
    from ._compat import VaSrch
    from ._confidence import ScoreCalibrator
    from ._config import (
        ChooseKOptions,
        Compute,
        EvalOptions,
        ExtractOptions,
        ReportOptions,
        TrainOptions,
        UpdateOptions,
    )
    from ._duplicates import DuplicateGroup, DuplicatePair, DuplicateReport, find_duplicates
    from ._evaluate import EvalConfig, EvalReport, evaluate
    from ._extract import ExtractionResult, extract_features
    from ._extractors import Extractor, get_extractor
    from ._kmeans import KMeansModel
    from ._options import SearchOptions
    from ._report import ReportSummary, make_report
    from ._search import Hit, Searcher, search_feedback, search_similar_images
    from ._selectk import KSelection, get_optimal_num_clusters
    from ._store import FeatureStore, load_features
    from ._train import train_clusters
    from ._update import UpdateReport, update_catalogue

_LAZY = {
    "VaSrch": "._compat",
    "ChooseKOptions": "._config",
    "Compute": "._config",
    "EvalOptions": "._config",
    "ExtractOptions": "._config",
    "ReportOptions": "._config",
    "TrainOptions": "._config",
    "UpdateOptions": "._config",
    "ScoreCalibrator": "._confidence",
    "DuplicateGroup": "._duplicates",
    "DuplicatePair": "._duplicates",
    "DuplicateReport": "._duplicates",
    "find_duplicates": "._duplicates",
    "ReportSummary": "._report",
    "make_report": "._report",
    "KMeansModel": "._kmeans",
    "SearchOptions": "._options",
    "train_clusters": "._train",
    "EvalConfig": "._evaluate",
    "EvalReport": "._evaluate",
    "evaluate": "._evaluate",
    "ExtractionResult": "._extract",
    "extract_features": "._extract",
    "Extractor": "._extractors",
    "get_extractor": "._extractors",
    "Hit": "._search",
    "Searcher": "._search",
    "search_similar_images": "._search",
    "search_feedback": "._search",
    "KSelection": "._selectk",
    "get_optimal_num_clusters": "._selectk",
    "FeatureStore": "._store",
    "load_features": "._store",
    "UpdateReport": "._update",
    "update_catalogue": "._update",
}


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'varsitysrch' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "ChooseKOptions",
    "Compute",
    "DuplicateGroup",
    "DuplicatePair",
    "DuplicateReport",
    "EvalConfig",
    "EvalOptions",
    "EvalReport",
    "ExtractOptions",
    "ExtractionResult",
    "Extractor",
    "FeatureStore",
    "FeatureStoreError",
    "Hit",
    "ImageError",
    "IncompatibleError",
    "IncompatibleFeaturesError",
    "IncompatibleModelError",
    "InvalidArgumentError",
    "KMeansModel",
    "KSelection",
    "MissingDependencyError",
    "ModelFileError",
    "NotFittedError",
    "ReportOptions",
    "ReportSummary",
    "ScoreCalibrator",
    "SearchOptions",
    "Searcher",
    "TrainOptions",
    "UpdateOptions",
    "UpdateReport",
    "VaSrch",
    "VarsitysrchError",
    "__version__",
    "evaluate",
    "extract_features",
    "find_duplicates",
    "get_extractor",
    "get_optimal_num_clusters",
    "load_features",
    "make_report",
    "search_feedback",
    "search_similar_images",
    "train_clusters",
    "update_catalogue",
]
