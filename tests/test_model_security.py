"""Nothing from a model file reaches files outside the operator's image folder."""

from __future__ import annotations

import os
from pathlib import Path

from varsitysrch._paths import resolve_image


def test_resolve_image_stays_inside_the_root(tmp_path: Path) -> None:
    root = tmp_path / "catalogue"
    (root / "shoes").mkdir(parents=True)
    (root / "shoes" / "a.jpg").write_bytes(b"x")
    outside = tmp_path / "secret.txt"
    outside.write_text("secret")
    os.symlink(outside, root / "link.jpg")
    os.symlink(tmp_path, root / "up")
    assert resolve_image(root, "shoes/a.jpg") == (root / "shoes" / "a.jpg").resolve()
    assert resolve_image(root, "shoes/missing.jpg") == (root / "shoes" / "missing.jpg").resolve()
    for bad in (
        "../secret.txt",
        "shoes/../../secret.txt",
        str(outside),
        "/etc/passwd",
        "link.jpg",  # symlink escape
        "up/secret.txt",  # symlinked folder escape
        "",
        ".",
        "a\x00b.jpg",
        "..\\secret.txt",
    ):
        assert resolve_image(root, bad) is None, bad
    assert resolve_image(None, "shoes/a.jpg") is None
    assert resolve_image(root, 5) is None


def test_resolve_image_keeps_odd_but_safe_names(tmp_path: Path) -> None:
    root = tmp_path / "c"
    root.mkdir()
    for name in ("new\nline.jpg", "=HYPERLINK(x).jpg", "caf\udce9.jpg", "..hidden.jpg"):
        got = resolve_image(root, name)
        assert got is not None and got.parent == root.resolve() and got.name == name


# ------------------------------------------------------------------ tampered model files
import io  # noqa: E402
import json  # noqa: E402
import zipfile  # noqa: E402
from collections.abc import Callable  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from varsitysrch import ModelFileError, Searcher, train_clusters  # noqa: E402
from varsitysrch._modelfile import load_model, read_assignments  # noqa: E402
from varsitysrch._store import FeatureStore  # noqa: E402

N, DIM, K = 120, 16, 4


def unit_rows(n: int, dim: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((K, dim)).astype(np.float32)
    X = centres[rng.integers(0, K, n)] + 0.3 * rng.standard_normal((n, dim)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small model with every optional part: clustering PCA, search PCA, embedded vectors."""
    d = tmp_path_factory.mktemp("base")
    ids = [f"c{i % K}/{i:04d}.jpg" for i in range(N)]
    FeatureStore.write(d / "f", ids, unit_rows(N, DIM), {"name": "generated", "dim": DIM})
    train_clusters(d / "f", d / "m.vsm", d / "c.csv", K, n_components=6, search_pca=8, show_progress=False)
    return d / "m.vsm"


def npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def rewrite(
    src: Path,
    dst: Path,
    *,
    config: Callable[[dict], object] | None = None,
    members: dict[str, bytes] | None = None,
    deflate: tuple[str, ...] = (),
) -> Path:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        names = zin.namelist() + [m for m in (members or {}) if m not in zin.namelist()]
        for name in names:
            data = members[name] if members and name in members else zin.read(name)
            if name == "model.json" and config is not None:
                data = json.dumps(config(json.loads(data))).encode()
            kind = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zout.writestr(name, data, compress_type=kind)
    return dst


def _set(key: str, value: object) -> Callable[[dict], dict]:
    def f(cfg: dict) -> dict:
        cur = cfg
        *path, last = key.split(".")
        for p in path:
            cur = cur[p]
        cur[last] = value
        return cfg

    return f


def _huge_header() -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<i4", "fortran_order": False, "shape": (10**12,)})
    return buf.getvalue() + b"\0" * 64


def _cases(base: Path) -> dict[str, tuple[dict, str]]:
    mf = load_model(base)
    labels, vectors, ids = mf.labels.copy(), np.asarray(mf.vectors, np.float32), list(mf.ids)
    out_of_range, negative = labels.copy(), labels.copy()
    out_of_range[3] = K
    negative[3] = -1
    sv = mf.arrays["search_vectors"]
    return {
        "model.json is a list": ({"config": lambda c: [c]}, "must be an object"),
        "training is null": ({"config": _set("training", None)}, "'training' must be an object"),
        "version is a string": ({"config": _set("version", "2")}, "version"),
        "input_size -5": ({"config": _set("extractor.input_size", -5)}, "input_size"),
        "extractor of another dim": ({"config": _set("extractor.dim", 1280)}, "dim"),
        "nprobe above k": ({"config": _set("nprobe", K + 1)}, "nprobe"),
        "k not the centroids'": ({"config": _set("k", K - 1)}, "cluster_sizes|centroids.npy has shape"),
        "labels out of range": ({"members": {"labels.npy": npy(out_of_range)}}, "labels must be in"),
        "negative labels": ({"members": {"labels.npy": npy(negative)}}, "labels must be in"),
        "float labels": ({"members": {"labels.npy": npy(labels.astype(np.float32))}}, "dtype"),
        "centroids of the wrong dim": (
            {"members": {"centroids.npy": npy(np.ones((K, 7), np.float32))}},
            "centroids.npy has shape",
        ),
        "header claims 10^12 rows": ({"members": {"labels.npy": _huge_header()}}, "labels.npy has shape"),
        "member shorter than its header": (
            {"members": {"distances.npy": npy(mf.distances)[:-8]}},
            "its header says",
        ),
        "all-NaN vectors": (
            {"members": {"vectors.npy": npy(np.full(vectors.shape, np.nan, np.float16))}},
            "NaN",
        ),
        "vectors x1000": ({"members": {"vectors.npy": npy((vectors * 1000).astype(np.float16))}}, "unit"),
        "search vectors x3": (
            {"members": {"extra/search_vectors.npy": npy(sv * 3)}},
            "unit",
        ),
        "search PCA of another dim": (
            {"members": {"extra/search_components.npy": npy(np.ones((8, DIM + 1), np.float32))}},
            "search_components.npy has shape",
        ),
        "duplicate ids": (
            {"members": {"ids.json": json.dumps([ids[0], *ids[:-1]]).encode()}},
            "duplicate id",
        ),
        "ids escaping the folder": (
            {"members": {"ids.json": json.dumps(["../../etc/passwd", *ids[1:]]).encode()}},
            "bad id",
        ),
        "ids not strings": ({"members": {"ids.json": json.dumps([1, *ids[1:]]).encode()}}, "list of strings"),
        "too few ids": ({"members": {"ids.json": json.dumps(ids[1:]).encode()}}, "ids for n_images"),
        "zip bomb": (
            {"members": {"ids.json": b"[" + b" " * (48 * 2**20) + b"]"}, "deflate": ("ids.json",)},
            "claims",
        ),
        "IVF lists out of range": (
            {
                "config": _set("ivf", {"nprobe": 1, "nlist": 2}),
                "members": {
                    "extra/ivf_centroids.npy": npy(np.eye(2, DIM, dtype=np.float32)),
                    "extra/ivf_lists.npy": npy(np.full(N, 5, np.int32)),
                },
            },
            "IVF lists",
        ),
    }


CASES = [
    "model.json is a list", "training is null", "version is a string", "input_size -5",
    "extractor of another dim", "nprobe above k", "k not the centroids'", "labels out of range",
    "negative labels", "float labels", "centroids of the wrong dim", "header claims 10^12 rows",
    "member shorter than its header", "all-NaN vectors", "vectors x1000", "search vectors x3",
    "search PCA of another dim", "duplicate ids", "ids escaping the folder", "ids not strings",
    "too few ids", "zip bomb", "IVF lists out of range",
]  # fmt: skip


def test_every_case_is_listed(base_model: Path) -> None:
    assert sorted(CASES) == sorted(_cases(base_model))


@pytest.mark.parametrize("case", CASES)
def test_tampered_model_is_a_one_line_model_file_error(base_model: Path, tmp_path: Path, case: str) -> None:
    change, message = _cases(base_model)[case]
    bad = rewrite(base_model, tmp_path / "bad.vsm", **change)
    for load in (load_model, Searcher):
        with pytest.raises(ModelFileError, match=message) as err:
            load(bad)
        text = str(err.value)
        assert "\n" not in text and len(text) < 400, text


def test_untampered_rewrite_still_loads(base_model: Path, tmp_path: Path) -> None:
    """The tampering helper itself changes nothing unless told (so the cases above test what they say)."""
    same = rewrite(base_model, tmp_path / "same.vsm", config=lambda c: c, deflate=("ids.json",))
    a, b = load_model(base_model), load_model(same)
    assert a.ids == b.ids and np.array_equal(a.labels, b.labels) and a.config == b.config


# ------------------------------------------------------------------ no root from the model file
def test_searcher_never_takes_a_root_from_the_model(base_model: Path, tmp_path: Path) -> None:
    mf = load_model(base_model)
    evil = ["etc/passwd", *mf.ids[1:]]
    crafted = rewrite(
        base_model,
        tmp_path / "evil.vsm",
        config=_set("image_root", "/"),
        members={"ids.json": json.dumps(evil).encode()},
    )
    s = Searcher(crafted)
    assert s.image_root is None
    assert all(h.path is None for h in s.search_id("etc/passwd", 5))
    root = tmp_path / "catalogue"
    linked = root / mf.ids[1]  # a catalogue entry that is a symlink to a file outside the root
    linked.parent.mkdir(parents=True)
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"x")
    os.symlink(secret, linked)
    inside = Searcher(crafted, image_root=root)
    hits = {h.image: h.path for h in inside.search_id("etc/passwd", N)}
    assert len(hits) == N
    assert hits["etc/passwd"] == str(root.resolve() / "etc" / "passwd")  # under the operator's root only
    assert hits[mf.ids[1]] is None  # a symlink out of the root is never handed out
    others = [p for image, p in hits.items() if image != mf.ids[1]]
    assert all(p is not None and Path(p).is_relative_to(root.resolve()) for p in others)


# ------------------------------------------------------------------ odd ids round-trip
def test_ids_with_newlines_and_undecodable_bytes_round_trip(tmp_path: Path) -> None:
    odd = ["a\nb.jpg", "cr\r.jpg", "caf\udce9.jpg", "=HYPERLINK(x).jpg", "'quoted.jpg", "tab\t.jpg"]
    ids = sorted(odd + [f"plain/{i:03d}.jpg" for i in range(40)])
    FeatureStore.write(
        tmp_path / "f", ids, unit_rows(len(ids), DIM, seed=3), {"name": "generated", "dim": DIM}
    )
    train_clusters(tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv", 3, show_progress=False)
    assert load_model(tmp_path / "m.vsm").ids == ids
    assert read_assignments(tmp_path / "c.csv")[0] == ids
    raw = (tmp_path / "c.csv").read_bytes()
    assert b"\n'=HYPERLINK(x).jpg," in raw and b"\n=HYPERLINK" not in raw  # spreadsheet-safe cell
    s = Searcher(tmp_path / "m.vsm", tmp_path / "c.csv")
    for rel in odd:
        assert s.search_id(rel, 1)[0].image == rel


# ------------------------------------------------------------------ model files of format 1
DATA = Path(__file__).parent / "data"


def test_format_1_model_written_by_the_previous_code_still_loads_and_searches(tmp_path: Path) -> None:
    """``data/model-v1.vsm`` was written by commit d95ed08 (``data/make_model_v1.py``): ids.txt, no
    stored search vectors; the Searcher projects its catalogue once and ranks exactly as before."""
    from varsitysrch._modelfile import _save_model
    from varsitysrch._postprocess import to_search_space

    mf = load_model(DATA / "model-v1.vsm")
    assert mf.config["version"] == 1 and mf.k == 5 and len(mf.ids) == 160
    assert mf.ids[0] == "shelf 0/café-000.jpg" and "search_vectors" not in mf.arrays
    s = Searcher(DATA / "model-v1.vsm", DATA / "clusters-v1.csv")
    R = to_search_space(
        np.asarray(mf.vectors, np.float32), mf.arrays["search_mean"], mf.arrays["search_components"]
    )
    for j in (0, 57, 159):
        q = np.asarray(mf.vectors[j], np.float32)
        want = np.argsort(-(R @ to_search_space(q, mf.arrays["search_mean"], mf.arrays["search_components"])))
        got = [h.image for h in s.search_vector(q, 5, exact=True)]
        assert got == [mf.ids[i] for i in want[:5]]
        assert s.search_id(mf.ids[j], 1)[0].image == mf.ids[j]
    # written again, it is format 2 and the same model
    _save_model(tmp_path / "v2.vsm", mf)
    again = load_model(tmp_path / "v2.vsm")
    assert again.config["version"] == 2 and again.ids == mf.ids
    assert np.array_equal(again.labels, mf.labels) and np.array_equal(again.centroids, mf.centroids)
