"""The shop features over HTTP: where filters, collapse, attributes on hits, /attributes, /search/feedback."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
from fastapi.testclient import TestClient

from varsitysrch.service import create_app


@pytest.fixture(scope="module")
def shop(
    synth_catalogue: tuple[Path, dict[str, str]], synth_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[TestClient, list[str], dict[str, str], Path]]:
    from varsitysrch import train_clusters
    from varsitysrch._store import FeatureStore

    root, labels = synth_catalogue
    tmp = tmp_path_factory.mktemp("shop-service")
    ids = FeatureStore.open(synth_store).ids
    (tmp / "a.csv").write_text(
        "image,shape,price,in_stock\n"
        + "".join(f"{i},{labels[i]},{j},{'yes' if j % 3 else 'no'}\n" for j, i in enumerate(ids)),
        encoding="utf-8",
    )
    train_clusters(
        synth_store, tmp / "m.vsm", tmp / "m.csv", 3, attributes=tmp / "a.csv", show_progress=False
    )
    app = create_app(tmp / "m.vsm", image_root=root, cache_dir=tmp / "thumbs")
    with TestClient(app) as c:
        yield c, ids, labels, root


def test_attributes_endpoint_describes_the_columns(shop: Any) -> None:
    c, ids, labels, _ = shop
    cols = {col["name"]: col for col in c.get("/attributes").json()["columns"]}
    assert (
        cols["price"]["kind"] == "number"
        and cols["price"]["min"] == 0
        and cols["price"]["max"] == len(ids) - 1
    )
    assert cols["in_stock"]["kind"] == "bool"
    assert {v for v, _ in cols["shape"]["values"]} == set(labels.values())


def test_where_on_every_search_route(shop: Any) -> None:
    c, ids, labels, root = shop
    shape = labels[ids[0]]
    want = {i for j, i in enumerate(ids) if labels[i] == shape and j < 12}
    r = c.get("/search", params={"image_id": ids[0], "top_n": 50, "where": [f"shape={shape}", "price<12"]})
    assert r.status_code == 200, r.text
    hits = r.json()["hits"]
    assert {h["image"] for h in hits} == want
    assert all(h["attributes"]["shape"] == shape and h["attributes"]["price"] < 12 for h in hits)
    j = c.get(
        "/search",
        params={"image_id": ids[0], "top_n": 50, "where": json.dumps({"shape": shape, "price": {"lt": 12}})},
    )
    assert [h["image"] for h in j.json()["hits"]] == [h["image"] for h in hits]
    data = (root / ids[0]).read_bytes()
    up = c.post(
        "/search",
        files={"image": ("q.png", data)},
        params={"top_n": 50, "where": [f"shape={shape}", "price<12"]},
    )
    assert up.status_code == 200 and {h["image"] for h in up.json()["hits"]} == want
    b = c.post("/search/batch", files=[("images", ("q.png", data))], data={"image_ids": [ids[0]]},
               params={"where": ["in_stock=false"], "top_n": 50})  # fmt: skip
    assert b.status_code == 200
    for res in b.json()["results"]:
        assert res["hits"] and all(h["attributes"]["in_stock"] is False for h in res["hits"])


@pytest.mark.parametrize(
    ("where", "status", "words"),
    [
        (["colour=red"], 422, "which is not an attribute"),
        (["price<cheap"], 422, "is not a finite number"),
        (["price"], 422, "need <column><op><value>"),
        (["{not json"], 422, "not a valid JSON object"),
    ],
)
def test_bad_filters_are_422_with_the_reason(shop: Any, where: list[str], status: int, words: str) -> None:
    c, ids, _, _ = shop
    r = c.get("/search", params={"image_id": ids[0], "where": where})
    assert r.status_code == status and words in r.json()["detail"]
    b = c.post("/search/batch", data={"image_ids": [ids[0]]}, params={"where": where})
    assert b.status_code == status


def test_collapse_lists_duplicates_and_returns_distinct_hits(shop: Any) -> None:
    c, ids, _, _ = shop
    plain = c.get("/search", params={"image_id": ids[0], "top_n": 23, "include_self": False}).json()["hits"]
    coll = c.get("/search", params={"image_id": ids[0], "top_n": 23, "include_self": False, "collapse": True})
    hits = coll.json()["hits"]
    folded = [d["image"] for h in hits for d in h.get("duplicates", [])]
    assert len(hits) + len(folded) <= len(plain) and folded  # the synthetic classes hold near-duplicates
    assert not {h["image"] for h in hits} & set(folded)
    assert all(d["thumbnail_url"].startswith("/thumbnails/") for h in hits for d in h.get("duplicates", []))


def test_feedback_endpoint(shop: Any) -> None:
    c, ids, labels, root = shop
    first = c.get("/search", params={"image_id": ids[0], "top_n": 10}).json()["hits"]
    pos = [h["image"] for h in first if labels[h["image"]] == labels[ids[0]]][:2]
    neg = [h["image"] for h in first if labels[h["image"]] != labels[ids[0]]][:2]
    r = c.post(
        "/search/feedback", data={"image_id": ids[0], "positive": pos, "negative": neg}, params={"top_n": 5}
    )
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["query"]["positive"] == pos and len(out["hits"]) == 5
    assert not set(pos + neg) & {h["image"] for h in out["hits"]}
    up = c.post(
        "/search/feedback",
        files={"image": ("q.png", (root / ids[0]).read_bytes())},
        data={"positive": pos},
        params={"top_n": 5, "where": ["in_stock=true"], "collapse": True},
    )
    assert up.status_code == 200 and all(h["attributes"]["in_stock"] for h in up.json()["hits"])
    assert c.post("/search/feedback", data={"positive": ["nope.png"]}).status_code == 404
    bad = c.post("/search/feedback", data={"negative": [ids[1]]})
    assert bad.status_code == 422 and "at least one positive" in bad.json()["detail"]
