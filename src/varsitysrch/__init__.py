"""varsitysrch: product image search by K-means over CNN features, fast on a CPU.

The four steps::

    from varsitysrch import extract_features, get_optimal_num_clusters, train_clusters, search_similar_images

    extract_features("catalog/", "features/")
    get_optimal_num_clusters("features/", 30, 10, plot_path="k.png")
    train_clusters("features/", "model.vsm", "clusters.csv", num_clusters=20)
    hits = search_similar_images("query.jpg", "model.vsm", "clusters.csv", top_n=5)
"""

from __future__ import annotations

from ._cluster import KMeansModel, train_clusters
from ._errors import (
    FeatureStoreError,
    ImageError,
    IncompatibleModelError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelFileError,
    NotFittedError,
    VarsitysrchError,
)
from ._extract import ExtractionResult, extract_features
from ._extractors import Extractor, get_extractor
from ._search import Hit, Searcher, search_similar_images
try:  # TEMP until the choose-k module lands
    from ._selectk import KSelection, get_optimal_num_clusters
except ImportError:  # pragma: no cover
    pass
from ._store import FeatureStore, load_features
from ._version import __version__

__all__ = [
    "ExtractionResult",
    "Extractor",
    "FeatureStore",
    "FeatureStoreError",
    "Hit",
    "ImageError",
    "IncompatibleModelError",
    "InvalidArgumentError",
    "KMeansModel",
    "KSelection",
    "MissingDependencyError",
    "ModelFileError",
    "NotFittedError",
    "Searcher",
    "VarsitysrchError",
    "__version__",
    "extract_features",
    "get_extractor",
    "get_optimal_num_clusters",
    "load_features",
    "search_similar_images",
    "train_clusters",
]
