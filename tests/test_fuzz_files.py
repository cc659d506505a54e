"""Fuzz harness for the files varsitysrch reads back: the feature store and the model file.

Seeded, fast (a few seconds in all on two cores): random one-bit flips and truncations of each
store file and of the model file, special files (FIFOs, devices, folders) and symlinks in place of
each name of a store folder, and deep nesting and huge numbers in the JSON headers.  Every
outcome must be one of

* a one-line error from varsitysrch's exception tree (:class:`~varsitysrch.VarsitysrchError`), or
* the unchanged, correct answer (the same ids, vectors, stamps and extractor; the same model),

within a time bound: nothing may hang (a FIFO is never opened for a blocking read) and nothing
may run away (``/dev/zero`` is never read).  Issue 19, "What to build" 7 (store and model half).
"""

from __future__ import annotations

import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from hostile import unblock_fifo
from varsitysrch import train_clusters
from varsitysrch._errors import VarsitysrchError
from varsitysrch._modelfile import ModelFile, load_model
from varsitysrch._store import STORE_JSON, FeatureStore, store_paths

SEED = 19
N, DIM = 24, 16
#: a single open or load of these tiny files takes milliseconds; this bounds each trial
TRIAL_SECONDS = 5.0


def _rows(n: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _write(folder: Path, seed: int = 0) -> None:
    FeatureStore.write(
        folder,
        [f"c{i % 3}/{i:03d}.png" for i in range(N)],
        _rows(N, seed),
        {"name": "generated", "dim": DIM},
        sizes=[1000 + i for i in range(N)],
        mtimes=[1_700_000_000_000_000_000 + i for i in range(N)],
        inodes=[7000 + i for i in range(N)],
        ctimes=[1_700_000_000_000_000_000 + i for i in range(N)],
    )


def answer(folder: Path) -> tuple[Any, ...]:
    """What a reader gets from a store: ids, vector bytes, stamps, extractor, dtype."""
    s = FeatureStore.open(folder)
    return (
        list(s.ids),
        np.asarray(s.vectors).tobytes(),
        s.stamps(),
        s.extractor,
        str(np.asarray(s.vectors).dtype),
    )


def model_answer(mf: ModelFile) -> tuple[Any, ...]:
    arrays = {k: v.tobytes() for k, v in sorted(mf.arrays.items())}
    vec = None if mf.vectors is None else mf.vectors.tobytes()
    return (
        json.dumps(mf.config, sort_keys=True),
        list(mf.ids),
        mf.centroids.tobytes(),
        mf.labels.tobytes(),
        mf.distances.tobytes(),
        vec,
        arrays,
    )


def bounded(fn: Callable[[], Any], fifos: tuple[Path, ...] = ()) -> tuple[str, Any]:
    """``("ok", value)`` or ``("error", exc)`` of ``fn()``; a hang past TRIAL_SECONDS fails the test."""
    out: dict[str, Any] = {}

    def run() -> None:
        try:
            out["ok"] = fn()
        except BaseException as exc:  # judged by the caller
            out["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    start = time.perf_counter()
    t.start()
    t.join(TRIAL_SECONDS)
    if t.is_alive():
        for f in fifos:
            unblock_fifo(f)
        t.join(5)
        pytest.fail(f"no answer within {TRIAL_SECONDS}s (a blocking read?)")
    assert time.perf_counter() - start < TRIAL_SECONDS
    return ("ok", out["ok"]) if "ok" in out else ("error", out["error"])


def judge(outcome: tuple[str, Any], want: Any, what: str, got: Callable[[Any], Any] = lambda v: v) -> str:
    """ "error" (one line, ours) or "same" (the unchanged answer); anything else fails."""
    kind, value = outcome
    if kind == "error":
        if not isinstance(value, VarsitysrchError):
            raise AssertionError(f"{what}: {type(value).__name__} is not ours: {value!r}") from value
        text = str(value)
        assert text and "\n" not in text, f"{what}: not one line: {text!r}"
        return "error"
    assert got(value) == want, f"{what}: a changed answer was accepted"
    return "same"


# ====================================================================== fixtures
@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    d = tmp_path_factory.mktemp("fuzz")
    _write(d / "store")
    train_clusters(d / "store", d / "m.vsm", d / "c.csv", 3, embed_index=False, show_progress=False)
    p = store_paths(d / "store")
    files = {"store.json": p.header, "vectors.npy": p.vectors, "ids.csv": p.ids}
    return {
        "dir": d,
        "answer": answer(d / "store"),
        "files": {name: path.read_bytes() for name, path in files.items()},
        "gen": p.generation,
        "model": (d / "m.vsm").read_bytes(),
        "model_answer": model_answer(load_model(d / "m.vsm")),
    }


def _store_copy(pristine: dict[str, Any], dst: Path) -> Path:
    shutil.copytree(pristine["dir"] / "store", dst, symlinks=True)
    return dst


def _put(path: Path, data: bytes) -> None:
    os.unlink(path)  # never write through a hard link to the pristine copy
    path.write_bytes(data)


# ====================================================================== bit flips and truncations
@pytest.mark.parametrize("name", ["store.json", "vectors.npy", "ids.csv"])
def test_store_file_bit_flips_and_truncations(pristine: dict[str, Any], tmp_path: Path, name: str) -> None:
    """120 one-bit flips and 30 truncations of each store file: an error or the same answer.

    A flip in the vectors or ids is always an error (their SHA-256 is recorded); 8b3ab45 let 21
    of 200 flips rename an id and 7 change vectors."""
    store = _store_copy(pristine, tmp_path / "s")
    rel = {"store.json": STORE_JSON, "vectors.npy": f"{pristine['gen']}/vectors.npy"}.get(
        name, f"{pristine['gen']}/ids.csv"
    )
    path = store / rel
    orig: bytes = pristine["files"][name]
    rng = np.random.default_rng([SEED, len(name)])
    tally = {"error": 0, "same": 0}
    trials: list[tuple[str, bytes]] = []
    for _ in range(120):
        data = bytearray(orig)
        off = int(rng.integers(len(data)))
        data[off] ^= 1 << int(rng.integers(8))
        trials.append((f"flip byte {off}", bytes(data)))
    for _ in range(30):
        cut = int(rng.integers(len(orig)))
        trials.append((f"truncate to {cut}", orig[:cut]))
    for what, data in trials:
        _put(path, data)
        outcome = bounded(lambda: answer(store))
        tally[judge(outcome, pristine["answer"], f"{name}: {what}")] += 1
    _put(path, orig)
    assert answer(store) == pristine["answer"]
    if name != "store.json":
        assert tally["same"] == 0, tally  # every change of the data files is caught
    assert tally["error"] > 0


def test_model_file_bit_flips_and_truncations(pristine: dict[str, Any], tmp_path: Path) -> None:
    """300 one-bit flips and 60 truncations of a model file: a ModelFileError or the same model
    (8b3ab45: a flipped compression method was a NotImplementedError traceback)."""
    orig: bytes = pristine["model"]
    rng = np.random.default_rng([SEED, 1])
    path = tmp_path / "m.vsm"
    tally = {"error": 0, "same": 0}
    trials: list[tuple[str, bytes]] = []
    for _ in range(300):
        data = bytearray(orig)
        off = int(rng.integers(len(data)))
        data[off] ^= 1 << int(rng.integers(8))
        trials.append((f"flip byte {off}", bytes(data)))
    for _ in range(60):
        cut = int(rng.integers(len(orig)))
        trials.append((f"truncate to {cut}", orig[:cut]))
    for what, data in trials:
        path.write_bytes(data)
        outcome = bounded(lambda: load_model(path))
        tally[judge(outcome, pristine["model_answer"], f"model: {what}", model_answer)] += 1
    assert tally["error"] > 0


def test_searcher_on_a_flipped_store_answers_the_same_or_refuses(
    pristine: dict[str, Any], tmp_path: Path
) -> None:
    """A model whose index lives in its store, searched over a store with a flipped bit: the same
    hits or a one-line error (40 trials over the three files)."""
    from varsitysrch import Searcher

    d = pristine["dir"]
    store = _store_copy(pristine, tmp_path / "s")
    q = _rows(N, 0)[[3, 11]]

    def hits() -> list[list[tuple[str, float]]]:
        s = Searcher(d / "m.vsm", features_folder=store)
        return [[(h.image, round(h.score, 5)) for h in s.search_vector(v, top_n=5)] for v in q]

    want = hits()
    rng = np.random.default_rng([SEED, 2])
    names = ["store.json", "vectors.npy", "ids.csv"]
    paths = {
        "store.json": store / STORE_JSON,
        "vectors.npy": store / pristine["gen"] / "vectors.npy",
        "ids.csv": store / pristine["gen"] / "ids.csv",
    }
    for trial in range(40):
        name = names[trial % 3]
        data = bytearray(pristine["files"][name])
        off = int(rng.integers(len(data)))
        data[off] ^= 1 << int(rng.integers(8))
        _put(paths[name], bytes(data))
        judge(bounded(hits), want, f"search over {name} flipped at {off}")
        _put(paths[name], pristine["files"][name])


# ====================================================================== special files and symlinks
#: the names of a store folder a reader or a writer touches
ENTRIES = ["store.json", "GEN", "GEN/vectors.npy", "GEN/ids.csv", ".lock", "vectors.npy", "parts", "colour"]
KINDS = ["fifo", "symlink to /dev/zero", "symlink to a copy", "folder", "file"]


def _plant(store: Path, entry: str, kind: str, gen: str, spare: Path) -> tuple[Path, tuple[Path, ...]]:
    """Replace ``entry`` of ``store`` by ``kind``; returns the planted path and FIFOs to unblock."""
    path = store / entry.replace("GEN", gen)
    copy = spare / f"copy-of-{path.name}"
    if path.is_dir() and not path.is_symlink():
        shutil.copytree(path, copy)
        shutil.rmtree(path)
    elif os.path.lexists(path):
        shutil.copy2(path, copy)
        path.unlink()
    else:
        copy.write_bytes(b"not ours")
    if copy.is_file() and copy.stat().st_size == 0:  # .lock is empty between writers
        copy.write_bytes(b"precious: must never be truncated")
    fifos: tuple[Path, ...] = ()
    if kind == "fifo":
        os.mkfifo(path)
        fifos = (path,)
    elif kind == "symlink to /dev/zero":
        path.symlink_to("/dev/zero")
    elif kind == "symlink to a copy":
        path.symlink_to(copy)
    elif kind == "folder":
        path.mkdir()
        (path / "mine.txt").write_text("the user's")
    else:
        path.write_bytes(b"the user's file")
    return path, fifos


def _fingerprint(path: Path) -> Any:
    """What must not change about a planted entry: its kind, link target, and content."""
    st = os.lstat(path)
    if os.path.islink(path):
        target = os.readlink(path)
        inner = os.path.realpath(path)
        content = Path(inner).read_bytes() if os.path.isfile(inner) and "zero" not in target else None
        return ("link", target, content)
    if os.path.isdir(path):
        return ("dir", sorted(os.listdir(path)))
    if os.path.isfile(path):
        return ("file", path.read_bytes())
    return ("special", st.st_mode)


@pytest.mark.parametrize("entry", ENTRIES)
def test_special_files_and_symlinks_in_place_of_each_store_name(
    pristine: dict[str, Any], tmp_path: Path, entry: str
) -> None:
    """Each name of a store folder as a FIFO, a symlink to /dev/zero or to a copy, a folder and a
    plain file: a reader gets an error or the same answer, a writer an error or a whole new store,
    nothing hangs, and the planted thing is left exactly as it was (8b3ab45: FIFOs hung train,
    extract and duplicates; ``.lock`` symlinked to a file truncated it)."""
    gen = pristine["gen"]
    for kind in KINDS:
        if (
            entry in ("store.json", "GEN/vectors.npy", "GEN/ids.csv", ".lock", "vectors.npy")
            and kind == "file"
        ):
            continue  # a regular file there is the normal case
        case = tmp_path / kind.replace(" ", "-").replace("/", "")
        case.mkdir()
        store = _store_copy(pristine, case / "s")
        spare = case / "spare"
        spare.mkdir()
        planted, fifos = _plant(store, entry, kind, gen, spare)
        before = _fingerprint(planted)
        spare_before = {q: q.read_bytes() for q in spare.rglob("*") if q.is_file()}
        what = f"{entry} as {kind}"
        # a reader
        judge(bounded(lambda store=store: answer(store), fifos), pristine["answer"], f"read, {what}")
        # a writer (a new catalogue): an error, or a store that holds exactly the new catalogue
        new = (case / "new").resolve()
        _write(new, seed=5)
        want_new = answer(new)
        outcome = bounded(lambda store=store: (_write(store, seed=5), answer(store))[1], fifos)
        judge(outcome, want_new, f"write, {what}")
        if not entry.startswith("GEN"):  # a superseded generation of ours may go, whatever it held
            assert _fingerprint(planted) == before, f"{what}: the planted entry was changed"
        spare_after = {q: q.read_bytes() for q in spare.rglob("*") if q.is_file()}
        assert spare_after == spare_before, f"{what}: the target of a symlink was written"


# ====================================================================== deep nesting, huge numbers
def _header_with(pristine: dict[str, Any], **changes: Any) -> bytes:
    meta = json.loads(pristine["files"]["store.json"])
    meta.update(changes)
    return json.dumps(meta).encode()


STORE_JSON_CASES: dict[str, Callable[[dict[str, Any]], bytes]] = {
    "nested 100,000 deep": lambda p: b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
    "nested object 50,000 deep": lambda p: b'{"a": ' + b'{"b": ' * 50_000 + b"1" + b"}" * 50_001,
    "count 10**400": lambda p: _header_with(p, count=10**400),
    "dim 10**400": lambda p: _header_with(p, dim=10**400),
    "version 10**400": lambda p: _header_with(p, version=10**400),
    "count of 5,000 digits": lambda p: _header_with(p, count=int("9" * 4000)).replace(
        b"9" * 4000, b"9" * 5000
    ),
    "count 1e400": lambda p: _header_with(p).replace(b'"count": 24', b'"count": 1e400'),
    "count -1": lambda p: _header_with(p, count=-1),
    "image_root 123": lambda p: _header_with(p, image_root=123),
    "extractor nested deep": lambda p: _header_with(p).replace(
        b'"extractor": {', b'"extractor": {"x": ' + b"[" * 50_000 + b"]" * 50_000 + b", "
    ),
    "generation of 10,000 chars": lambda p: _header_with(p, generation="g-" + "a" * 10_000),
    "files a list": lambda p: _header_with(p, files=[1, 2]),
}


@pytest.mark.parametrize("case", list(STORE_JSON_CASES))
def test_store_json_deep_nesting_and_huge_numbers(
    pristine: dict[str, Any], tmp_path: Path, case: str
) -> None:
    store = _store_copy(pristine, tmp_path / "s")
    _put(store / STORE_JSON, STORE_JSON_CASES[case](pristine))
    assert judge(bounded(lambda: answer(store)), pristine["answer"], case) == "error"


MODEL_JSON_CASES: dict[str, Callable[[dict[str, Any]], Any]] = {
    "k 10**400": lambda c: {**c, "k": 10**400},
    "dim 10**400": lambda c: {**c, "dim": 10**400},
    "n_images 10**400": lambda c: {**c, "n_images": 10**400},
    "nprobe -10**400": lambda c: {**c, "nprobe": -(10**400)},
    "features.checksum 123": lambda c: {**c, "features": {**c["features"], "checksum": 123}},
    "assignments a list": lambda c: {**c, "assignments": [1]},
}


@pytest.mark.parametrize("case", [*MODEL_JSON_CASES, "nested 100,000 deep"])
def test_model_json_deep_nesting_and_huge_numbers(
    pristine: dict[str, Any], tmp_path: Path, case: str
) -> None:
    import zipfile

    src = pristine["dir"] / "m.vsm"
    dst = tmp_path / "m.vsm"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for name in zin.namelist():
            data = zin.read(name)
            if name == "model.json":
                if case in MODEL_JSON_CASES:
                    data = json.dumps(MODEL_JSON_CASES[case](json.loads(data))).encode()
                else:
                    data = b'{"a": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
            zout.writestr(name, data)
    assert judge(bounded(lambda: load_model(dst)), None, case, model_answer) == "error"
