"""The original ``vasrch`` package's class API, for code that migrates from it.

The original offered a class ``VaSrch`` whose four methods are the four pipeline steps, and the
same four names as module-level functions.  Both surfaces exist here with the same method names
and positional arguments; the methods call the module-level functions, so the two behave the
same::

    from varsitysrch import VaSrch          # was: from vasrch import VaSrch

    vs = VaSrch()
    vs.extract_features("images/", "features/")
    vs.get_optimal_num_clusters("features/", max_clusters=30, n_components=10)  # optimal_clusters.png
    vs.train_clusters("features/", "model.vsm", "clusters.csv", num_clusters=20)
    for path in vs.search_similar_images("query.jpg", "model.vsm", "clusters.csv", top_n=5):
        print(path)                        # each result is the image's path (a str)

The original built its Keras model in ``__init__``; here the extractor is loaded lazily, on the
first call that needs it, so constructing a ``VaSrch`` is instant.  What changed and why is in
the README's migration section.  The functions are resolved through the package (lazily), so
this module does not depend on where each step lives.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._extract import ExtractionResult
    from ._extractors import Extractor
    from ._images import ImageSource
    from ._search import Hit
    from ._selectk import KSelection


__all__ = ["VaSrch"]


class VaSrch:
    """The original package's class: the four pipeline steps as methods.

    Args:
        extractor: the feature extractor for :meth:`extract_features` (a name such as
            ``"efficientnet-lite0"``, the default, or an :class:`~varsitysrch.Extractor`).
            Search always uses the extractor recorded in the model file.
        show_progress: progress bars and the one-line summary of each step.
    """

    def __init__(self, extractor: str | Extractor | None = None, *, show_progress: bool = True) -> None:
        self.extractor = extractor
        self.show_progress = show_progress

    def __repr__(self) -> str:
        return f"VaSrch(extractor={self.extractor!r}, show_progress={self.show_progress!r})"

    def extract_features(
        self, img_folder: str | os.PathLike[str], save_to: str | os.PathLike[str], **kwargs: Any
    ) -> ExtractionResult:
        """Embed every image under ``img_folder`` into the feature store ``save_to``."""
        from . import extract_features

        kwargs.setdefault("extractor", self.extractor)
        kwargs.setdefault("show_progress", self.show_progress)
        return extract_features(img_folder, save_to, **kwargs)

    def get_optimal_num_clusters(
        self,
        features_folder: str | os.PathLike[str],
        max_clusters: int = 30,
        n_components: int | None = None,
        **kwargs: Any,
    ) -> KSelection:
        """Score k = 2..max_clusters, save the elbow/silhouette plot and recommend a k."""
        from . import get_optimal_num_clusters

        kwargs.setdefault("show_progress", self.show_progress)
        return get_optimal_num_clusters(features_folder, max_clusters, n_components, **kwargs)

    def train_clusters(
        self,
        features_folder: str | os.PathLike[str],
        model_filename: str | os.PathLike[str],
        csv_filename: str | os.PathLike[str],
        num_clusters: int,
        **kwargs: Any,
    ) -> Any:
        """Train K-means on the features; write the model file and the assignments CSV."""
        from . import train_clusters

        kwargs.setdefault("show_progress", self.show_progress)
        return train_clusters(features_folder, model_filename, csv_filename, num_clusters, **kwargs)

    def search_similar_images(
        self,
        image_path: ImageSource,
        model_filename: str | os.PathLike[str],
        csv_file: str | os.PathLike[str] | None = None,
        top_n: int = 5,
        **kwargs: Any,
    ) -> list[Hit]:
        """The ``top_n`` catalogue images most similar to ``image_path``, best first."""
        from . import search_similar_images

        kwargs.setdefault("show_progress", self.show_progress)
        return search_similar_images(image_path, model_filename, csv_file, top_n, **kwargs)
