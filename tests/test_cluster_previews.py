"""The web page's Clusters tab and the report show a cluster through one order (issue 22, item 5).

The page previewed each cluster's alphabetically first members (for a cluster of 20 shorts and 12
skirts: 2 dresses, its worst outlier and a pair of pants) while the report showed the central ones.
Both use :func:`varsitysrch._central.central_first`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("fastapi")


def test_clusters_tab_previews_the_central_members(synth_model: tuple[Path, Path], tmp_path: Path) -> None:
    from fastapi.testclient import TestClient

    from varsitysrch._central import central_first
    from varsitysrch._modelfile import load_model
    from varsitysrch.service import create_app

    model, csv = synth_model
    mf = load_model(model)
    labels, dists = np.asarray(mf.labels), np.asarray(mf.distances)
    app = create_app(model, csv, cache_dir=tmp_path / "thumbs", reload_interval=0)
    with TestClient(app) as c:
        data = c.get("/clusters", params={"sample": 4}).json()
        for cluster in data["clusters"]:
            want = [mf.ids[int(r)] for r in central_first(np.flatnonzero(labels == cluster["id"]), dists)]
            assert [m["image"] for m in cluster["sample"]] == want[:4], cluster["id"]
            page = c.get(f"/clusters/{cluster['id']}", params={"limit": 50}).json()
            assert [m["image"] for m in page["members"]] == want  # browsing: most typical first too
