"""Attributes: typed columns from a CSV joined to the catalogue, the where language, persistence."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import numpy as np
import pytest

from varsitysrch import InvalidArgumentError, ModelFileError
from varsitysrch._attributes import Attributes, _normalise_where, _parse_condition, _parse_where

IDS = [f"cat{i % 3}/img{i:03d}.jpg" for i in range(12)]


def write(tmp_path: Path, text: str, name: str = "attrs.csv") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def table(tmp_path: Path) -> Attributes:
    lines = ["image,category,price,in_stock,sku"]
    for i, id_ in enumerate(IDS[:10]):  # the last two catalogue images have no row
        price = "" if i == 4 else f"{i * 10 + 0.5:g}"
        lines.append(
            f"{id_},{['shoes', 'bags', 'hats'][i % 3]},{price},{'true' if i % 2 else 'false'},{i:05d}"
        )
    return Attributes.from_csv(write(tmp_path, "\n".join(lines) + "\n"), IDS, types={"sku": "string"})


def test_types_are_detected_and_missing_cells_stay_missing(tmp_path: Path) -> None:
    a = table(tmp_path)
    kinds = {n: c.kind for n, c in a.columns.items()}
    assert kinds == {"category": "string", "price": "number", "in_stock": "bool", "sku": "string"}
    assert a.row(3) == {"category": "shoes", "price": 30.5, "in_stock": True, "sku": "00003"}
    assert "price" not in a.row(4)  # empty cell
    assert a.row(11) == {}  # no row in the file
    assert a.report is not None and a.report.missing == 2 and a.report.matched == 10
    # a column with one text cell among numbers is text; "1_000" is not a number in a CSV
    b = Attributes.from_csv(
        write(tmp_path, "image,size\na.jpg,42\nb.jpg,XL\nc.jpg,1_000\n"), ["a.jpg", "b.jpg"]
    )
    assert b.columns["size"].kind == "string"


def test_join_reports_unknown_ids_and_accepts_dot_slash_and_backslash(tmp_path: Path) -> None:
    p = write(tmp_path, "image,brand\n./cat0/img000.jpg,a\ncat1\\img001.jpg,b\nnot/here.jpg,c\n")
    a = Attributes.from_csv(p, IDS)
    assert a.row(0) == {"brand": "a"} and a.row(1) == {"brand": "b"}
    assert a.report is not None and a.report.unknown == ["not/here.jpg"]
    assert "not/here.jpg" in a.report.summary()
    with pytest.raises(InvalidArgumentError, match=r"not in the catalogue.*not/here\.jpg"):
        Attributes.from_csv(p, IDS, strict=True)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("name,brand\na.jpg,x\n", "no 'image' column"),
        ("image,brand\na.jpg,x\na.jpg,y\n", "line 3: image 'a.jpg' appears twice"),
        ("image,brand\na.jpg,x,extra\n", "line 2: 3 cells, the header has 2"),
        ("image,Price (EUR)\na.jpg,3\n", "'Price \\(EUR\\)' must start with a letter"),
        ("image,brand,brand\na.jpg,x,y\n", "'brand' appears twice"),
        ("image,brand\n,x\n", "empty 'image' cell"),
        ("", "is empty"),
    ],
)
def test_bad_files_get_one_line_errors_naming_the_value(tmp_path: Path, text: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rule) as ei:
        Attributes.from_csv(write(tmp_path, text), ["a.jpg"])
    assert "\n" not in str(ei.value)


def test_unreadable_or_missing_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        Attributes.from_csv(tmp_path / "nope.csv", IDS)
    bad = tmp_path / "latin1.csv"
    bad.write_bytes(b"image,brand\na.jpg,caf\xe9\n")
    with pytest.raises(InvalidArgumentError, match="not UTF-8"):
        Attributes.from_csv(bad, ["a.jpg"])
    with pytest.raises(InvalidArgumentError, match="types names column 'nope'"):
        Attributes.from_csv(write(tmp_path, "image,b\na.jpg,1\n"), ["a.jpg"], types={"nope": "string"})
    with pytest.raises(InvalidArgumentError, match="'x' is not a finite number"):
        Attributes.from_csv(write(tmp_path, "image,b\na.jpg,x\n"), ["a.jpg"], types={"b": "number"})


@pytest.mark.parametrize(
    ("text", "want"),
    [
        ("category=shoes", ("category", "eq", "shoes")),
        ("category==shoes", ("category", "eq", "shoes")),
        ("category != shoes", ("category", "ne", "shoes")),
        ("brand in a,b", ("brand", "in", ["a", "b"])),
        ("brand IN a, b", ("brand", "in", ["a", "b"])),
        ("brand=a,b", ("brand", "in", ["a", "b"])),
        ("brand not in a,b", ("brand", "not_in", ["a", "b"])),
        ('brand in "a, b",c', ("brand", "in", ["a, b", "c"])),
        ("price<50", ("price", "lt", "50")),
        ("price<=50", ("price", "lte", "50")),
        ("price>10", ("price", "gt", "10")),
        ("price >= 10", ("price", "gte", "10")),
        ("in_stock=true", ("in_stock", "eq", "true")),
        ("title=a<b", ("title", "eq", "a<b")),  # the first operator wins
    ],
)
def test_where_strings(text: str, want: tuple[str, str, object]) -> None:
    assert _parse_condition(text) == want


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("", "non-empty"),
        ("price", "need <column><op><value>"),
        ("price<", "empty value"),
        ("p<1,2", "one value"),
    ],
)
def test_bad_where_strings(text: str, rule: str) -> None:
    with pytest.raises(InvalidArgumentError, match=rule):
        _parse_condition(text)


def test_where_strings_merge_into_ranges() -> None:
    assert _parse_where(["price>=10", "price<50", "brand=a"]) == {
        "price": {"gte": "10", "lt": "50"},
        "brand": {"eq": "a"},
    }
    with pytest.raises(InvalidArgumentError, match="already has a 'lt'"):
        _parse_where(["price<10", "price<50"])
    assert _normalise_where({"brand": ["a", "b"], "price": {"le": 3}}) == [
        ("brand", "in", ["a", "b"]),
        ("price", "lte", 3),
    ]


def brute(a: Attributes, conds: list[tuple[str, str, object]]) -> np.ndarray:
    """The same filter row by row in plain Python: the reference."""
    out = []
    for i in range(len(a)):
        row = a.row(i)
        ok = True
        for name, op, v in conds:
            x = row.get(name)
            if x is None:
                ok = False
                continue
            if op == "eq":
                ok &= x == v
            elif op == "ne":
                ok &= x != v
            elif op == "in":
                ok &= x in v  # type: ignore[operator]
            elif op == "not_in":
                ok &= x not in v  # type: ignore[operator]
            elif op == "lt":
                ok &= x < v  # type: ignore[operator]
            elif op == "lte":
                ok &= x <= v  # type: ignore[operator]
            elif op == "gt":
                ok &= x > v  # type: ignore[operator]
            elif op == "gte":
                ok &= x >= v  # type: ignore[operator]
        out.append(ok)
    return np.array(out)


def random_table(n: int, seed: int) -> Attributes:
    rng = np.random.default_rng(seed)
    ids = [f"i{j}.jpg" for j in range(n)]
    recs: dict[str, dict[str, object]] = {}
    for j, id_ in enumerate(ids):
        r: dict[str, object] = {}
        if rng.random() > 0.1:
            r["brand"] = str(rng.choice(["a", "b", "c", "d"]))
        if rng.random() > 0.1:
            r["price"] = float(np.round(rng.uniform(0, 100), 1))
        if rng.random() > 0.1:
            r["in_stock"] = bool(rng.random() > 0.5)
        recs[id_] = r if j else {"brand": "a", "price": 1.0, "in_stock": True}
    return Attributes.from_records(recs, ids)


def test_masks_match_a_row_by_row_reference() -> None:
    a = random_table(400, 0)
    rng = np.random.default_rng(1)
    conds_pool: list[tuple[str, str, object]] = [
        ("brand", "eq", "a"),
        ("brand", "ne", "b"),
        ("brand", "in", ["a", "c"]),
        ("brand", "not_in", ["a", "zzz"]),
        ("brand", "eq", "absent"),
        ("in_stock", "eq", True),
        ("in_stock", "ne", True),
    ]
    for op in ("lt", "lte", "gt", "gte"):
        conds_pool.append(("price", op, float(np.round(rng.uniform(0, 100), 1))))
    conds_pool.append(("price", "in", [1.0, 50.5]))
    for r in (1, 2, 3):
        for conds in itertools.combinations(conds_pool, r):
            m = a.mask({})
            assert m is None
            where: dict[str, dict[str, object]] = {}
            for name, op, v in conds:
                where.setdefault(name, {})[op] = v
            if sum(len(v) for v in where.values()) != len(conds):
                continue  # the same operator twice on one column: not expressible as a dict
            got = a.mask(where)
            assert got is not None
            np.testing.assert_array_equal(got, brute(a, list(conds)), err_msg=str(conds))


def test_where_strings_give_the_same_mask_as_dicts(tmp_path: Path) -> None:
    a = table(tmp_path)
    cases = [
        (["category=shoes", "price<50"], {"category": "shoes", "price": {"lt": 50}}),
        (["category in shoes,hats"], {"category": ["shoes", "hats"]}),
        (["in_stock=yes", "price>=10.5"], {"in_stock": True, "price": {"gte": 10.5}}),
        (["sku=00003"], {"sku": "00003"}),
    ]
    for strings, d in cases:
        ms, md = a.mask(strings), a.mask(d)
        assert ms is not None and md is not None
        np.testing.assert_array_equal(ms, md)
        assert ms.any()
    m = a.mask(["category=shoes", "price<50"])
    assert m is not None
    assert [IDS[i] for i in np.flatnonzero(m)] == ["cat0/img000.jpg", "cat0/img003.jpg"]


@pytest.mark.parametrize(
    ("where", "rule"),
    [
        ({"colour": "red"}, "'colour', which is not an attribute"),
        ({"price": {"lt": "cheap"}}, "'cheap' is not a finite number"),
        ({"price": {"lt": math.nan}}, "not a finite number"),
        ({"category": {"lt": 3}}, "ranges need a numeric column"),
        ({"in_stock": "maybe"}, "is true/false"),
        ({"price": {"about": 3}}, "operator must be one of"),
        ({"category": []}, "list of values is empty"),
        ({"category": None}, "None is not a value"),
        (42, "where must be a dict"),
    ],
)
def test_bad_filters_name_the_value_and_the_rule(tmp_path: Path, where: object, rule: str) -> None:
    a = table(tmp_path)
    with pytest.raises(InvalidArgumentError, match=rule):
        a.mask(where)  # type: ignore[arg-type]


def test_roundtrip_through_json_and_arrays(tmp_path: Path) -> None:
    import json

    a = random_table(300, 3)
    cfg = json.loads(json.dumps(a.to_config()))
    arrays = a.to_arrays()
    assert all(v.dtype.kind in "fiu" and not v.dtype.hasobject for v in arrays.values())
    specs = Attributes.array_specs(cfg, len(a))
    assert set(specs) == set(arrays)
    b = Attributes.from_parts(cfg, arrays, a.ids)
    for i in range(len(a)):
        assert a.row(i) == b.row(i)
    where = {"brand": ["a", "b"], "price": {"gte": 30}, "in_stock": False}
    np.testing.assert_array_equal(a.mask(where), b.mask(where))  # type: ignore[arg-type]
    # non-ASCII categories survive
    c = Attributes.from_records({"x.jpg": {"brand": "café ☕"}}, ["x.jpg"])
    assert Attributes.from_parts(c.to_config(), c.to_arrays(), ["x.jpg"]).row(0) == {"brand": "café ☕"}


@pytest.mark.parametrize(
    "damage",
    [
        lambda cfg, arr: arr.pop("attr0_values"),
        lambda cfg, arr: arr.__setitem__("attr0_values", arr["attr0_values"][:-1]),
        lambda cfg, arr: arr.__setitem__("attr0_values", arr["attr0_values"] + 99),
        lambda cfg, arr: arr.__setitem__("attr0_offsets", arr["attr0_offsets"][::-1].copy()),
        lambda cfg, arr: cfg["columns"][0].__setitem__("kind", "pickle"),
        lambda cfg, arr: cfg["columns"][0].__setitem__("name", "bad name"),
        lambda cfg, arr: arr.__setitem__("attr0_text", np.full(len(arr["attr0_text"]), 0xFF, np.uint8)),
    ],
)
def test_damaged_parts_are_model_file_errors(damage: object) -> None:
    a = random_table(50, 4)
    cfg, arrays = a.to_config(), a.to_arrays()
    damage(cfg, arrays)  # type: ignore[operator]
    with pytest.raises(ModelFileError):
        Attributes.from_parts(cfg, arrays, a.ids)


def test_align_keeps_values_of_kept_ids_and_leaves_new_ones_missing(tmp_path: Path) -> None:
    a = table(tmp_path)
    new_ids = [IDS[3], "new.jpg", IDS[0]]
    b = a.align(new_ids)
    assert b.row(0) == a.row(3) and b.row(1) == {} and b.row(2) == a.row(0)
    m = b.mask({"category": "shoes"})
    assert m is not None and m.tolist() == [True, False, True]


def test_describe_gives_what_a_filter_control_needs(tmp_path: Path) -> None:
    d = {c["name"]: c for c in table(tmp_path).describe()}
    assert d["price"]["min"] == 0.5 and d["price"]["max"] == 90.5 and d["price"]["missing"] == 3
    assert d["category"]["values"][0] == ["shoes", 4]
    assert d["in_stock"]["counts"] == {"true": 5, "false": 5}


# ------------------------------------------------------------------ filtered candidate generation
def clustered(
    n: int = 3000, k: int = 30, dim: int = 16, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    from varsitysrch._neighbours import nearest_centroid

    rng = np.random.default_rng(seed)
    C = rng.standard_normal((k, dim)).astype(np.float32)
    X = C[rng.integers(0, k, n)] + 0.5 * rng.standard_normal((n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    labels, _ = nearest_centroid(X, C)
    return X, labels, C


def filtered_top(X: np.ndarray, q: np.ndarray, rows: np.ndarray, n: int) -> list[int]:
    s = X[rows] @ q
    o = np.lexsort((rows, -s))[:n]
    return rows[o].tolist()


@pytest.mark.parametrize("share", [0.003, 0.01, 0.1, 0.5])
def test_masked_candidates_hold_only_matches_and_enough_of_them(share: float) -> None:
    from varsitysrch._attributes import FilterCache, masked_candidates
    from varsitysrch._neighbours import centroid_order

    X, labels, C = clustered()
    n, k = len(X), len(C)
    rng = np.random.default_rng(5)
    keep = rng.random(n) < share
    attrs = Attributes.from_records(
        {f"{i}": {"ok": bool(keep[i])} for i in range(n)}, [f"{i}" for i in range(n)]
    )
    cache = FilterCache(attrs, labels, k)
    flt = cache.get({"ok": True})
    assert flt is not None and cache.get(["ok=true"]) is flt  # the same filter, compiled once
    members = np.argsort(labels, kind="stable").astype(np.int64)
    offsets = np.concatenate([[0], np.cumsum(np.bincount(labels, minlength=k))])
    Q = X[rng.choice(n, 20, replace=False)] + 0.1 * rng.standard_normal((20, X.shape[1])).astype(np.float32)
    orders = centroid_order(Q, C)
    exact_rows = np.flatnonzero(keep)
    for q, order in zip(Q, orders, strict=True):
        for nprobe in (1, 3):
            for top_n in (5, 50):
                rows = masked_candidates(order, offsets, members, flt, nprobe, top_n)
                assert keep[rows].all()  # only matching rows are scored
                assert len(rows) >= min(top_n, flt.count)  # exactly top_n come back when that many match
                assert len(set(rows.tolist())) == len(rows)
        full = masked_candidates(order, offsets, members, flt, k, 10)  # full nprobe: exact filtered search
        assert filtered_top(X, q, full, 10) == filtered_top(X, q, exact_rows, 10)


def test_ivf_masked_search_matches_exact_filtered_search() -> None:
    import faiss

    from varsitysrch._attributes import FilterCache, ivf_masked_search
    from varsitysrch._index import _train_ivf, build_faiss_index

    X, labels, _ = clustered(4000, 20, 16, seed=2)
    Cl, lists = _train_ivf(X, 40, random_state=0)
    index = build_faiss_index(Cl, lists, X)
    n = len(X)
    rng = np.random.default_rng(3)
    for share in (0.005, 0.2, 0.7):
        keep = rng.random(n) < share
        attrs = Attributes.from_records(
            {f"{i}": {"ok": bool(keep[i])} for i in range(n)}, [f"{i}" for i in range(n)]
        )
        flt = FilterCache(attrs, labels, 20).get({"ok": True})
        assert flt is not None
        for q in X[rng.choice(n, 10, replace=False)]:
            rows, scores = ivf_masked_search(index, X, q, 10, 4, flt)
            assert keep[rows].all() and len(rows) == min(10, flt.count)
            assert np.all(np.diff(scores) <= 1e-6)
            full, _ = ivf_masked_search(index, X, q, 10, int(index.nlist), flt)
            assert full.tolist() == filtered_top(X, q, np.flatnonzero(keep), 10)
    assert faiss.omp_get_max_threads() >= 1


# ------------------------------------------------------------------ through train_clusters and the Searcher
def shop_catalogue(tmp: Path, n: int = 1500, k_true: int = 12, dim: int = 24, seed: int = 0):
    from varsitysrch._store import FeatureStore

    rng = np.random.default_rng(seed)
    C = rng.standard_normal((k_true, dim)).astype(np.float32)
    lab = rng.integers(0, k_true, n)
    X = C[lab] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    ids = [f"p/{i:05d}.jpg" for i in range(n)]
    FeatureStore.write(tmp / "store", ids, X, {"name": "test", "dim": dim})
    price = np.round(rng.uniform(1, 200, n), 2)
    stock = rng.random(n) < 0.7
    rare = rng.random(n) < 0.004  # ~6 rows: fewer than top_n
    with open(tmp / "attrs.csv", "w", encoding="utf-8") as f:
        f.write("image,category,price,in_stock,rare\n")
        for i in range(n):
            stock_i, rare_i = "true" if stock[i] else "false", "yes" if rare[i] else "no"
            f.write(f"{ids[i]},c{lab[i] % 4},{price[i]},{stock_i},{rare_i}\n")
    return (
        X,
        ids,
        {"category": np.array([f"c{v % 4}" for v in lab]), "price": price, "in_stock": stock, "rare": rare},
    )


@pytest.fixture(scope="module")
def shop_model(tmp_path_factory: pytest.TempPathFactory):
    from varsitysrch import Searcher, train_clusters

    tmp = tmp_path_factory.mktemp("shop")
    X, ids, cols = shop_catalogue(tmp)
    train_clusters(
        tmp / "store", tmp / "m.vsm", tmp / "m.csv", 16, attributes=tmp / "attrs.csv", show_progress=False
    )
    return Searcher(tmp / "m.vsm"), X, ids, cols, tmp


FILTERS = [
    ({"category": "c1"}, lambda c: c["category"] == "c1"),
    (
        {"category": ["c0", "c2"], "price": {"lt": 50}},
        lambda c: np.isin(c["category"], ["c0", "c2"]) & (c["price"] < 50),
    ),
    (["price>=20", "price<=25"], lambda c: (c["price"] >= 20) & (c["price"] <= 25)),
    (["in_stock=false", "category!=c3"], lambda c: ~c["in_stock"] & (c["category"] != "c3")),
    ({"rare": True}, lambda c: c["rare"]),
]


@pytest.mark.parametrize(("where", "ref"), FILTERS)
def test_filtered_search_returns_matching_rows_exactly_top_n_and_exact_at_full_nprobe(
    shop_model, where, ref
) -> None:
    s, X, ids, cols, _ = shop_model
    match = ref(cols)
    allowed = {ids[i] for i in np.flatnonzero(match)}
    rng = np.random.default_rng(7)
    for q in X[rng.choice(len(X), 15, replace=False)] + 0.05:
        q = q / np.linalg.norm(q)
        for top_n in (1, 10, 40):
            hits = s.search_vector(q, top_n, where=where)
            assert {h.image for h in hits} <= allowed  # only matching rows
            assert len(hits) == min(top_n, int(match.sum()))  # exactly top_n whenever that many match
            assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
        exact = s.search_vector(q, 10, where=where, exact=True, expand=0, rerank="none")  # the plain order
        full = s.search_vector(q, 10, where=where, nprobe=s.k, expand=0, rerank="none")
        scores = (s._scoring @ s._to_ranking(q[None])[0]).astype(np.float64)
        rows = np.flatnonzero(match)
        want = rows[np.lexsort((rows, -scores[rows]))][:10]
        assert [h.image for h in exact] == [ids[i] for i in want]  # exact filtered search
        assert [h.image for h in full] == [h.image for h in exact]  # full nprobe = exact
        # with the default query expansion: expanded by matching rows only, and full nprobe = exact
        qe_exact = s.search_vector(q, 10, where=where, exact=True)
        assert {h.image for h in qe_exact} <= allowed
        assert [h.image for h in s.search_vector(q, 10, where=where, nprobe=s.k)] == [
            h.image for h in qe_exact
        ]


def test_filtered_search_by_id_and_image_paths_agree(shop_model) -> None:
    s, _X, ids, cols, _ = shop_model
    hits = s.search_id(ids[3], 5, where={"category": "c2"}, include_self=False)
    assert all(cols["category"][ids.index(h.image)] == "c2" for h in hits) and len(hits) == 5
    assert ids[3] not in {h.image for h in hits}


def test_attributes_are_stored_with_the_model(shop_model) -> None:
    s, _, _ids, cols, _ = shop_model
    assert s.attributes is not None
    assert s.attributes.names == ["category", "price", "in_stock", "rare"]
    assert s.attributes.row(5) == {
        "category": str(cols["category"][5]),
        "price": float(cols["price"][5])
        if not float(cols["price"][5]).is_integer()
        else int(cols["price"][5]),
        "in_stock": bool(cols["in_stock"][5]),
        "rare": bool(cols["rare"][5]),
    }


def test_filter_errors_are_clear(shop_model, tmp_path: Path) -> None:
    from varsitysrch import Searcher, train_clusters

    s, X, *_ = shop_model
    with pytest.raises(InvalidArgumentError, match="'colour', which is not an attribute"):
        s.search_vector(X[0], 5, where={"colour": "red"})
    assert s.search_vector(X[0], 5, where={"category": "no such category"}) == []
    shop_catalogue(tmp_path, n=200)
    train_clusters(tmp_path / "store", tmp_path / "plain.vsm", tmp_path / "plain.csv", 4, show_progress=False)
    with pytest.raises(InvalidArgumentError, match="this model has no attributes"):
        Searcher(tmp_path / "plain.vsm").search_vector(X[0][:24], 5, where={"category": "c1"})
    with pytest.raises(InvalidArgumentError, match="no 'image' column"):
        (tmp_path / "bad.csv").write_text("id,x\na,1\n")
        train_clusters(
            tmp_path / "store", tmp_path / "b.vsm", tmp_path / "b.csv", 4, attributes=tmp_path / "bad.csv"
        )
    assert not (tmp_path / "b.vsm").exists()  # refused before anything was written


def test_tampered_attribute_arrays_are_refused(shop_model, tmp_path: Path) -> None:
    import io
    import zipfile

    from varsitysrch import Searcher

    _, _, _, _, tmp = shop_model
    src = tmp / "m.vsm"
    for member, payload in [
        ("extra/attr0_values.npy", np.arange(3, dtype=np.int32)),  # wrong length
        ("extra/attr1_values.npy", np.array(["x"] * 1500)),  # text where numbers belong
    ]:
        out = tmp_path / "t.vsm"
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(out, "w") as zout:
            for item in zin.infolist():
                data = zin.read(item.filename)
                if item.filename == member:
                    buf = io.BytesIO()
                    np.save(buf, payload, allow_pickle=False)
                    data = buf.getvalue()
                zout.writestr(item, data)
        with pytest.raises(ModelFileError):
            Searcher(out)


def test_ivf_filtered_search(tmp_path: Path) -> None:
    from varsitysrch import Searcher, train_clusters

    X, ids, cols = shop_catalogue(tmp_path, n=2000)
    train_clusters(
        tmp_path / "store",
        tmp_path / "i.vsm",
        tmp_path / "i.csv",
        8,
        attributes=tmp_path / "attrs.csv",
        ivf=True,
        show_progress=False,
    )
    s = Searcher(tmp_path / "i.vsm")
    assert s.probe_unit == "lists"  # searched through the IVF
    match = (cols["category"] == "c1") & (cols["price"] < 100)
    rows = np.flatnonzero(match)
    for q in X[:10]:
        hits = s.search_vector(q, 10, where={"category": "c1", "price": {"lt": 100}})
        assert len(hits) == 10 and all(match[ids.index(h.image)] for h in hits)
        ex = s.search_vector(q, 10, where={"category": "c1", "price": {"lt": 100}}, exact=True, expand=0)
        sc = np.asarray(s.vectors[rows], np.float32) @ q  # the index holds float16 vectors
        assert [h.image for h in ex] == [ids[i] for i in rows[np.lexsort((rows, -sc))][:10]]


def test_update_keeps_attributes_of_kept_images_and_takes_a_new_table(
    synth_catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    import shutil

    from varsitysrch import Searcher, extract_features, train_clusters, update_catalogue

    src, _ = synth_catalogue
    img = tmp_path / "img"
    shutil.copytree(src, img)
    extract_features(img, tmp_path / "f", show_progress=False)
    from varsitysrch._store import FeatureStore

    ids = FeatureStore.open(tmp_path / "f").ids
    (tmp_path / "a.csv").write_text(
        "image,brand\n" + "".join(f"{i},{'x' if j % 2 else 'y'}\n" for j, i in enumerate(ids)),
        encoding="utf-8",
    )
    train_clusters(
        tmp_path / "f",
        tmp_path / "m.vsm",
        tmp_path / "m.csv",
        3,
        attributes=tmp_path / "a.csv",
        show_progress=False,
    )
    gone, first = ids[0], ids[1]
    (img / gone).unlink()
    shutil.copy(img / first, img / "new.png")
    update_catalogue(img, tmp_path / "f", tmp_path / "m.vsm", tmp_path / "m.csv", show_progress=False)
    s = Searcher(tmp_path / "m.vsm")
    assert s.attributes is not None and s.attributes.ids == s.ids and gone not in s.ids
    assert s.attributes.row(s.ids.index(first)) == {"brand": "x"}  # kept image, kept value
    assert s.attributes.row(s.ids.index("new.png")) == {}  # new image: no attributes yet
    assert all(h.image != "new.png" for h in s.search_id(first, 30, where={"brand": "x"}))
    (tmp_path / "b.csv").write_text("image,colour\nnew.png,red\n", encoding="utf-8")
    update_catalogue(
        img,
        tmp_path / "f",
        tmp_path / "m.vsm",
        tmp_path / "m.csv",
        attributes=tmp_path / "b.csv",
        show_progress=False,
    )
    s = Searcher(tmp_path / "m.vsm")
    assert s.attributes is not None and s.attributes.names == ["colour"]
    assert [h.image for h in s.search_id(first, 5, where={"colour": "red"})] == ["new.png"]


def test_cli_train_attributes_and_search_where(
    synth_catalogue: tuple[Path, dict[str, str]], synth_store: Path, tmp_path: Path
) -> None:
    import json

    from typer.testing import CliRunner

    from varsitysrch._store import FeatureStore
    from varsitysrch.cli import app

    root, labels = synth_catalogue
    ids = FeatureStore.open(synth_store).ids
    (tmp_path / "a.csv").write_text(
        "image,shape,price\n"
        + "".join(f"{i},{labels[i]},{j}\n" for j, i in enumerate(ids))
        + "ghost.png,x,1\n",
        encoding="utf-8",
    )
    runner = CliRunner()
    m, c = tmp_path / "m.vsm", tmp_path / "m.csv"
    r = runner.invoke(
        app,
        [
            "train",
            str(synth_store),
            "-m",
            str(m),
            "-c",
            str(c),
            "-k",
            "3",
            "--attributes",
            str(tmp_path / "a.csv"),
        ],
    )
    assert r.exit_code == 0, r.output
    assert "1 rows name images not in the catalogue" in r.output and "price (number)" in r.output
    query = root / ids[0]
    shape = labels[ids[0]]
    r = runner.invoke(
        app,
        [
            "search",
            str(query),
            "-m",
            str(m),
            "-n",
            "50",
            "--where",
            f"shape={shape}",
            "--where",
            "price<20",
            "--json",
        ],
    )
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    want = [i for j, i in enumerate(ids) if labels[i] == shape and j < 20]
    assert sorted(h["image"] for h in hits) == sorted(want)
    r = runner.invoke(app, ["search", str(query), "-m", str(m), "--where", "colour=red"])
    assert r.exit_code == 2 and "which is not an attribute" in r.output
    r = runner.invoke(app, ["search", str(query), "-m", str(m), "--where", "price<cheap"])
    assert r.exit_code == 2 and "'cheap' is not a finite number" in r.output
    r = runner.invoke(app, ["search", str(query), "-m", str(m), "--collapse", "--json"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 5
