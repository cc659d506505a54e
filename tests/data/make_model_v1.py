"""How ``model-v1.vsm`` and ``clusters-v1.csv`` were made: with the code of commit d95ed08 (format 1).

    git archive d95ed08 src | tar -x -C /tmp/old
    python tests/data/make_model_v1.py /tmp/old/src tests/data

Kept so that the fixture's origin is clear; the suite only reads the files.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np


def main(old_src: str, out: Path) -> None:
    sys.path.insert(0, old_src)
    from varsitysrch._cluster import train_clusters  # type: ignore[import-not-found]

    from varsitysrch._store import FeatureStore

    rng = np.random.default_rng(7)
    centres = rng.standard_normal((5, 24)).astype(np.float32)
    X = centres[rng.integers(0, 5, 160)] + 0.4 * rng.standard_normal((160, 24)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = [f"shelf {i // 40}/café-{i:03d}.jpg" for i in range(160)]
    store = out / "v1-store"
    ident = {"name": "efficientnet-lite0", "dim": 24, "input_size": 224}
    FeatureStore.write(store, ids, X.astype(np.float16), ident)
    train_clusters(store, out / "model-v1.vsm", out / "clusters-v1.csv", 5, search_pca=8, show_progress=False)


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))
