"""Issue 9, store and ingestion half: nothing lost, nothing let in.

Each test names the defect it covers; the ones marked "failed on d95ed08" were run
against the code before the fix and failed there.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, features

from hostile import (
    FORMULA_NAMES,
    LINE_NAMES,
    NON_UTF8_NAME,
    expected,
    fifo,
    make_hostile_catalogue,
    solid,
    thin,
    unblock_fifo,
)
from varsitysrch import extract_features
from varsitysrch._errors import FeatureStoreError, ImageError
from varsitysrch._images import load_image, scan_images
from varsitysrch._io import _neutralise_cell, _restore_cell, read_csv, write_csv, write_json
from varsitysrch._store import (
    STORE_JSON,
    FeatureStore,
    load_features,
    store_paths,
)

HOSTILE_CELLS = [
    '=HYPERLINK("http://evil","click")',
    "+cmd|' /C calc'!A0",
    "-2+3",
    "@SUM(A1)",
    "\tx",
    "\rx",
    "'quoted",
    "''",
    "a\nb\rc.jpg",
    "caf\udcff.jpg",  # not valid UTF-8 on disk
    "plain.jpg",
    "",
]


# ---------------------------------------------------------------- CSV injection (failed on d95ed08)
def test_csv_cells_spreadsheets_would_evaluate_are_neutralised(tmp_path):
    p = tmp_path / "x.csv"
    write_csv(p, ["id", "n"], [(c, i) for i, c in enumerate(HOSTILE_CELLS)])
    with open(p, encoding="utf-8", errors="surrogateescape", newline="") as f:
        raw = list(csv.reader(f))[1:]
    for cell, _ in raw:
        assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
    header, rows = read_csv(p)
    assert header == ["id", "n"]
    assert [r[0] for r in rows] == HOSTILE_CELLS  # recoverable, exactly
    assert [int(r[1]) for r in rows] == list(range(len(HOSTILE_CELLS)))


@pytest.mark.parametrize("cell", [*HOSTILE_CELLS, "'", "'''=x", "=", "-", "x'"])
def test_neutralise_is_a_bijection(cell):
    assert _restore_cell(_neutralise_cell(cell)) == cell


def test_numbers_are_never_touched(tmp_path):
    p = tmp_path / "n.csv"
    write_csv(p, ["a", "b", "c"], [(-1, -2.5, "-0.25"), (3, 1e-9, "+4")])
    text = p.read_text()
    assert "'" not in text
    assert read_csv(p)[1] == [["-1", "-2.5", "-0.25"], ["3", "1e-09", "+4"]]


def test_neutralise_false_writes_cells_verbatim(tmp_path):
    p = tmp_path / "v.csv"
    write_csv(p, ["id"], [["=1+1"]], neutralise=False)
    assert read_csv(p, neutralised=False)[1] == [["=1+1"]]


def test_non_utf8_names_round_trip_through_csv_and_json(tmp_path):
    import json

    name = "caf\udcff\udce9.jpg"
    write_csv(tmp_path / "a.csv", ["id"], [[name]])
    assert b"caf\xff\xe9.jpg" in (tmp_path / "a.csv").read_bytes()
    assert read_csv(tmp_path / "a.csv")[1] == [[name]]
    write_json(tmp_path / "a.json", {"id": name})
    raw = (tmp_path / "a.json").read_bytes()
    raw.decode("utf-8")  # JSON stays valid UTF-8
    assert json.loads(raw) == {"id": name}


# =================================================================== ingestion
REPO = Path(__file__).resolve().parents[1]
PY = sys.executable


def _run(code: str, timeout: float = 240, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PY, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(REPO / "tests"), os.environ.get("PYTHONPATH", "")]),
            **env,
        },
        cwd=REPO,
    )


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], Path]:
    """The hostile catalogue, extracted once in a subprocess (a hang there fails, never blocks the suite)."""
    base = tmp_path_factory.mktemp("hostile")
    root, out = base / "cat", base / "features"
    entries = make_hostile_catalogue(root)
    try:
        proc = _run(
            f"""
            from varsitysrch import extract_features
            r = extract_features({str(root)!r}, {str(out)!r}, show_progress=False)
            print(r.summary())
            """,
            timeout=180,
        )
    except subprocess.TimeoutExpired:
        unblock_fifo(root / "special" / "pipe.jpg")
        pytest.fail("extract_features hung on the hostile catalogue (FIFO?)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root, entries, out


def test_hostile_catalogue_every_image_kept_every_leftout_reported(hostile) -> None:
    """FIFO hang, dangling symlink abort, non-UTF-8 / newline names, thin images, silent AVIF/HEIC
    and symlinked-folder omissions (all failed on d95ed08: the run hung on the FIFO)."""
    _root, entries, out = hostile
    ids, X, _ = load_features(out)
    assert set(ids) == expected(entries, "ok")
    assert NON_UTF8_NAME.replace("/", "") in {i.split("/")[-1] for i in ids}
    assert {f"lines/{n}" for n in LINE_NAMES} <= set(ids)
    assert {f"formula/{n}" for n in FORMULA_NAMES} <= set(ids)
    from varsitysrch._io import read_csv

    _, rows = read_csv(out / "skipped.csv")
    reasons = {r[0]: r[1] for r in rows}
    assert set(reasons) == expected(entries, "skip")
    assert all(reasons.values())
    assert "FIFO" in reasons["special/pipe.jpg"] and "dangling" in reasons["links/dangling.png"]
    assert "symlinked folder" in reasons["linked-folder/"]
    assert "thinner" in reasons["bad/thin-1x20000.png"]
    assert "pillow-heif" in reasons["formats/photo.heic"] or features.check("avif")
    # every vector is a distinct unit vector (symlink and target are the same picture)
    assert np.allclose(np.linalg.norm(X, axis=1), 1, atol=1e-3)


def test_hostile_names_never_start_a_formula_in_any_csv(hostile) -> None:
    """=HYPERLINK(...) file names landed as live formulas in ids.csv / skipped.csv (failed on d95ed08)."""
    _, _, out = hostile
    import csv

    for path in (store_paths(out).ids, out / "skipped.csv"):
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            for row in csv.reader(f):
                for cell in row:
                    assert (
                        not cell.startswith(("=", "+", "-", "@", "\t", "\r")) or cell.lstrip("+-").isdigit()
                    )


def test_rerun_on_hostile_catalogue_reuses_everything(hostile, tmp_path: Path) -> None:
    """Non-UTF-8 names made every rerun fail (UnicodeEncodeError, failed on d95ed08); now they round-trip."""
    root, entries, out = hostile
    copy = tmp_path / "f"
    shutil.copytree(out, copy, symlinks=True)
    proc = _run(
        f"""
        from varsitysrch import extract_features
        r = extract_features({str(root)!r}, {str(copy)!r}, show_progress=False)
        print(r.n_embedded, r.n_reused)
        """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["0", str(len(expected(entries, "ok")))]


def test_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    """load_image (extract, update and search) blocked for ever on a FIFO named *.jpg (failed on d95ed08)."""
    p = fifo(tmp_path / "pipe.jpg")
    result: list[BaseException | None] = []

    def go() -> None:
        try:
            load_image(p)
            result.append(None)
        except BaseException as exc:
            result.append(exc)

    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(10)
    if t.is_alive():
        unblock_fifo(p)
        t.join(5)
        pytest.fail("load_image blocked on a FIFO")
    assert isinstance(result[0], ImageError) and "FIFO" in str(result[0])


def test_files_vanishing_at_any_point_are_skipped_not_fatal(tmp_path: Path, monkeypatch) -> None:
    """A file deleted between listing and stat aborted the whole run (failed on d95ed08)."""
    import varsitysrch._extract as ex_mod
    import varsitysrch._images as im_mod

    root = tmp_path / "cat"
    for i in range(6):
        solid(root / f"{i}.png", (40 * i, 100, 200 - 30 * i), seed=i)
    real_walk = im_mod._walk

    def walk_then_delete(top, *a, **k):  # gone between listing and stat
        for dirpath, dirnames, filenames in real_walk(top, *a, **k):
            if "0.png" in filenames:
                os.unlink(os.path.join(dirpath, "0.png"))
            yield dirpath, dirnames, filenames

    real_scan = ex_mod.scan_images

    def scan_then_delete(*a, **k):  # gone between stat and decode
        listing = real_scan(*a, **k)
        os.unlink(root / "1.png")
        return listing

    monkeypatch.setattr(im_mod, "_walk", walk_then_delete)
    monkeypatch.setattr(ex_mod, "scan_images", scan_then_delete)
    res = extract_features(root, tmp_path / "f", show_progress=False)
    reasons = dict(res.skipped)
    assert res.n_images == 4 and set(reasons) == {"0.png", "1.png"}
    assert "vanished" in reasons["0.png"] and "no such file" in reasons["1.png"]  # gone before decode


def test_unreadable_subfolder_is_reported(tmp_path: Path, monkeypatch) -> None:
    """os.walk swallowed unreadable folders: their images vanished from the catalogue silently
    (failed on d95ed08).  The error is injected: tests may run as root, who reads anything."""
    root = tmp_path / "cat"
    solid(root / "ok" / "a.png", (200, 0, 0))
    solid(root / "locked" / "b.png", (0, 200, 0))
    real = os.scandir

    def scandir(path="."):
        if os.fspath(path).endswith("locked"):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = scan_images(root)
    assert listing.ids == ["ok/a.png"]
    assert listing.skipped == [("locked/", "unreadable folder (Permission denied): left out")]


def test_thin_images_are_refused_before_decoding(tmp_path: Path) -> None:
    """A 1 x 20,000 PNG cost ~10 s and ~4 GB in the centre crop (failed on d95ed08: it decoded)."""
    for w, h in ((1, 20_000), (20_000, 1), (3, 50_000)):
        with pytest.raises(ImageError, match="thinner"):
            load_image(thin(tmp_path / f"t{w}x{h}.png", w, h), 224, "center-crop")


@pytest.mark.parametrize("resize", ["center-crop", "letterbox", "squash"])
def test_resize_never_allocates_more_than_the_output(tmp_path: Path, monkeypatch, resize: str) -> None:
    """The centre crop resized to 224 x (224*h/w) before cropping (failed on d95ed08 for center-crop)."""
    sizes: list[tuple[int, int]] = []
    real = Image.Image.resize

    def spy(self, size, *a, **k):
        sizes.append(tuple(size))
        return real(self, size, *a, **k)

    monkeypatch.setattr(Image.Image, "resize", spy)
    for w, h in ((2, 400), (400, 2), (640, 480), (30, 3000)):
        arr = load_image(thin(tmp_path / f"{w}x{h}.png", w, h), 224, resize)
        assert arr.shape == (224, 224, 3)
    assert sizes and all(a * b <= 224 * 224 for a, b in sizes), sizes


def test_centre_crop_is_the_centre_square(tmp_path: Path) -> None:
    """Known answer: a 300x100 image red | green | blue in thirds crops to its green middle."""
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, :100, 0] = a[:, 100:200, 1] = a[:, 200:, 2] = 255
    Image.fromarray(a).save(tmp_path / "rgb.png")
    out = load_image(tmp_path / "rgb.png", 32, "center-crop").astype(int)
    assert out[:, :, 1].mean() > 240 and out[:, :, 0].mean() < 15 and out[:, :, 2].mean() < 15


def test_avif_decodes_where_pillow_can_and_heic_is_reported(tmp_path: Path) -> None:
    """AVIF/HEIC files were left out without a line in skipped.csv (failed on d95ed08)."""
    root = tmp_path / "cat"
    solid(root / "a.png", (200, 20, 20))
    if features.check("avif"):
        solid(root / "b.avif", (20, 200, 20))
    else:
        (root / "b.avif").write_bytes(b"not really")
    (root / "c.heic").write_bytes(b"\x00\x00\x00\x18ftypheic")
    listing = scan_images(root)
    reasons = dict(listing.skipped)
    if features.check("avif"):
        assert "b.avif" in listing.ids
        assert load_image(root / "b.avif", 32).shape == (32, 32, 3)
    else:
        assert "libavif" in reasons["b.avif"]
    try:
        import pillow_heif  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        assert "pillow-heif" in reasons["c.heic"]


# =================================================================== the store
def _catalogue(root: Path, n: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for i in range(n):
        solid(
            root / f"c{i % 3}" / f"{i:03d}.png", tuple(int(v) for v in rng.integers(0, 255, 3)), seed=seed + i
        )
    return root


@pytest.fixture(scope="module")
def two_catalogues(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, np.ndarray]]:
    """Catalogues A (10 images) and B (A minus 3, plus 4 new), and every image's reference vector."""
    base = tmp_path_factory.mktemp("two")
    a = _catalogue(base / "A", 10, seed=0)
    b = base / "B"
    shutil.copytree(a, b)
    for rel in ("c0/000.png", "c1/004.png", "c2/008.png"):
        (b / rel).unlink()
    for i in range(4):
        solid(b / "new" / f"n{i}.png", (30 * i, 250 - 40 * i, 90), seed=100 + i)
    ref: dict[str, np.ndarray] = {}
    for name, root in (("A", a), ("B", b)):
        extract_features(root, base / f"ref-{name}", show_progress=False)
        ids, X, _ = load_features(base / f"ref-{name}")
        ref.update({f"{name}:{i}": x for i, x in zip(ids, X, strict=True)})
    return a, b, ref


def _assert_whole(out: Path, two_catalogues, allowed: tuple[str, ...] = ("A", "B")) -> str:
    """The store opens and holds exactly catalogue A or B (ids and their vectors), never a mix."""
    a, b, ref = two_catalogues
    ids, X, _ = load_features(out)
    for name, root in (("A", a), ("B", b)):
        want = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.png"))
        if ids == want and name in allowed:
            for rel, x in zip(ids, X, strict=True):
                np.testing.assert_allclose(x, ref[f"{name}:{rel}"], atol=1e-4, err_msg=rel)
            return name
    raise AssertionError(f"store holds a mix: {ids}")


@pytest.mark.parametrize("step", ["vectors", "ids", "header", "rename"])
def test_injected_failure_at_each_commit_step_keeps_the_old_catalogue(
    tmp_path: Path, two_catalogues, monkeypatch, step: str
) -> None:
    """vectors.npy, ids.csv and store.json were renamed one by one (a failure between them left a
    store every later command refused; failed on d95ed08, which has no commit steps at all)."""
    import varsitysrch._io as io_mod
    import varsitysrch._store as st

    a, b, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    if step == "rename":
        real = io_mod.os.replace

        def replace(src, dst):
            if Path(dst).name == STORE_JSON:
                raise OSError(errno.EIO, "injected I/O error", str(dst))
            return real(src, dst)

        monkeypatch.setattr(io_mod.os, "replace", replace)
    else:

        def hook(name: str) -> None:
            if name == step:
                raise OSError(errno.EIO, "injected I/O error")

        monkeypatch.setattr(st, "_commit_hook", hook)
    with pytest.raises(FeatureStoreError) as info:
        extract_features(b, out, show_progress=False)
    assert "\n" not in str(info.value)
    monkeypatch.undo()
    assert _assert_whole(out, two_catalogues) == "A"
    assert not [p for p in out.rglob("*.tmp")]
    _no_leftovers(out)
    # and the next run completes the update
    extract_features(b, out, show_progress=False)
    assert _assert_whole(out, two_catalogues) == "B"


KILL_SCRIPT = """
import os, signal, sys
import varsitysrch._store as st
step = os.environ.get("KILL_AT_STEP")
if step:
    st._commit_hook = lambda name: name == step and os.kill(os.getpid(), signal.SIGKILL)
from varsitysrch import extract_features
print("start", flush=True)
extract_features(sys.argv[1], sys.argv[2], show_progress=False, batch_size=2, num_workers=1)
"""


def _extract_proc(root: Path, out: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-c", KILL_SCRIPT, str(root), str(out)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **env},
    )


@pytest.mark.parametrize("step", ["vectors", "ids", "header", "cleanup"])
def test_kill_9_at_each_commit_step_leaves_old_or_new_catalogue(tmp_path: Path, two_catalogues, step) -> None:
    """A real kill -9 inside the commit: the store opens and holds A or B whole (failed on d95ed08:
    320 vectors / 300 ids after a kill of update)."""
    a, b, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    p = _extract_proc(b, out, KILL_AT_STEP=step)
    p.communicate(timeout=180)
    assert p.returncode == -signal.SIGKILL
    got = _assert_whole(out, two_catalogues, ("A",) if step != "cleanup" else ("B",))
    assert got == ("B" if step == "cleanup" else "A")
    res = extract_features(b, out, show_progress=False)  # the rerun resumes and cleans up
    assert _assert_whole(out, two_catalogues) == "B"
    _no_leftovers(out)
    if step != "cleanup":
        assert res.n_embedded == 0, "the killed run's checkpoints are reused"
    assert not (out / "parts").exists()


@pytest.mark.parametrize("delay", [0.3, 1.0, 2.0, 3.5])
def test_kill_9_at_random_times_during_extract(tmp_path: Path, two_catalogues, delay: float) -> None:
    """kill -9 of a running extract at several moments (import, embedding, checkpoints, commit)."""
    import time

    a, b, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    p = _extract_proc(b, out)
    assert p.stdout is not None
    p.stdout.readline()  # imported
    time.sleep(delay)
    p.send_signal(signal.SIGKILL)
    p.communicate(timeout=60)
    _assert_whole(out, two_catalogues)
    extract_features(b, out, show_progress=False)
    assert _assert_whole(out, two_catalogues) == "B"
    _no_leftovers(out)


def test_second_writer_gets_a_clear_error_naming_the_holder(tmp_path: Path, two_catalogues) -> None:
    """Two extracts into one store interleaved (one catalogue's ids with the other's vectors; failed
    on d95ed08: no lock, the second run went ahead)."""
    a, b, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    holder = subprocess.Popen(
        [
            PY,
            "-c",
            f"import sys, varsitysrch._store as s\nwith s.store_lock({str(out)!r}):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(FeatureStoreError, match=rf"being written by another process \(pid {holder.pid} "):
            extract_features(b, out, show_progress=False)
        with pytest.raises(FeatureStoreError, match="another process"):
            FeatureStore.write(
                out, ["x.png"], np.eye(1, 1280, dtype=np.float32), {"name": "test", "dim": 1280}
            )
    finally:
        holder.communicate("", timeout=30)
    assert _assert_whole(out, two_catalogues) == "A"
    extract_features(b, out, show_progress=False)  # lock released with the process
    assert _assert_whole(out, two_catalogues) == "B"


def test_checkpoints_are_named_per_run(tmp_path: Path, two_catalogues, monkeypatch) -> None:
    """Two runs shared parts/part-00000.* (failed on d95ed08: same names)."""
    from varsitysrch import _extractors

    a, _, _ = two_catalogues
    out = tmp_path / "f"
    real = _extractors.Embedder.embed
    names: list[set[str]] = []
    for _ in range(2):
        calls = {"n": 0}

        def flaky(self, batch, calls=calls):
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt
            return real(self, batch)

        monkeypatch.setattr(_extractors.Embedder, "embed", flaky)
        before = {p.name for p in (out / "parts").glob("part-*")} if (out / "parts").exists() else set()
        with pytest.raises(KeyboardInterrupt):  # one lane: the second batch is the second embed call
            extract_features(a, out, batch_size=2, checkpoint_every=2, num_workers=0, show_progress=False)
        names.append({p.name for p in (out / "parts").glob("part-*")} - before)
    runs = [{n.split("-")[1] for n in s} for s in names]
    assert all(len(r) == 1 for r in runs) and runs[0] != runs[1]
    monkeypatch.setattr(_extractors.Embedder, "embed", real)
    res = extract_features(a, out, show_progress=False)
    assert res.n_reused == 4 and res.n_embedded == 6  # both runs' checkpoints resumed
    assert _assert_whole(out, two_catalogues) == "A"


def test_small_runs_checkpoint_too(tmp_path: Path, two_catalogues, monkeypatch) -> None:
    """Below 2,048 images the CLI wrote no checkpoint, so a kill lost all work (failed on d95ed08)."""
    from varsitysrch._extract import _Parts

    a, _, _ = two_catalogues
    saved: list[int] = []
    real = _Parts.save

    def spy(self, ids, X, stats):
        saved.append(len(ids))
        return real(self, ids, X, stats)

    monkeypatch.setattr(_Parts, "save", spy)
    monkeypatch.setattr("varsitysrch._extract._CHECKPOINT_MIN_SECONDS", 0.0)  # a 10-image run is quick
    extract_features(a, tmp_path / "f", batch_size=2, show_progress=False)  # the CLI's defaults
    assert len(saved) >= 3 and sum(saved) == 10, saved


def test_empty_listing_never_replaces_a_store(tmp_path: Path, two_catalogues) -> None:
    """An empty or unmounted image folder rewrote the store with count 0 (failed on d95ed08)."""
    a, _, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    empty = tmp_path / "mnt"
    empty.mkdir()
    with pytest.raises(FeatureStoreError, match="holds 10 images and was left as it is"):
        extract_features(empty, out, show_progress=False)
    assert _assert_whole(out, two_catalogues) == "A"
    with pytest.raises(FeatureStoreError, match="allow_empty"):
        FeatureStore.write(out, [], np.zeros((0, 1280), np.float32), {"name": "test", "dim": 1280})
    res = extract_features(empty, out, show_progress=False, allow_empty=True)
    assert res.n_images == 0 and load_features(out)[0] == []


def test_in_place_edit_with_size_and_mtime_kept_is_reembedded(tmp_path: Path) -> None:
    """Only size+mtime were compared: an in-place edit that kept both kept its stale vector
    (failed on d95ed08)."""
    root = tmp_path / "cat"
    solid(root / "a.bmp", (200, 30, 30), seed=1)
    solid(root / "b.bmp", (30, 200, 30), seed=2)
    out = tmp_path / "f"
    extract_features(root, out, show_progress=False)
    st = os.stat(root / "a.bmp")
    solid(root / "a.bmp", (30, 30, 200), seed=3)  # same size (BMP), different picture
    os.utime(root / "a.bmp", ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(root / "a.bmp").st_size == st.st_size
    res = extract_features(root, out, show_progress=False)
    assert res.n_embedded == 1 and res.embedded_ids == {"a.bmp"}
    _ids, X, _ = load_features(out)
    _fresh_ids, fresh, _ = load_features(extract_features(root, tmp_path / "g", show_progress=False).store)
    np.testing.assert_allclose(X, fresh, atol=1e-5)


# ------------------------------------------------------------------ disk full
def _no_leftovers(out: Path) -> None:
    assert not list(out.rglob("*.tmp"))
    gens = [p.name for p in out.iterdir() if p.name.startswith("g-")]
    assert gens == [store_paths(out).generation]


@pytest.mark.parametrize("where", ["fallocate", "write", "header"])
def test_disk_full_is_one_line_and_leaves_nothing_behind(tmp_path: Path, two_catalogues, monkeypatch, where):
    """ENOSPC gave SIGBUS (writable memory map) or a 60-line traceback and left sparse temp files
    (failed on d95ed08: vectors were written through open_memmap, see the next test)."""
    import builtins

    import varsitysrch._io as io_mod
    import varsitysrch._store as st

    a, b, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "fallocate":

        def fallocate(fd, off, n):
            raise full

        monkeypatch.setattr(st.os, "posix_fallocate", fallocate)
    elif where == "write":

        class Full:
            def __init__(self, f):
                self.f = f

            def write(self, data):
                if len(data) > 1000:  # the rows, after the .npy header
                    raise full
                return self.f.write(data)

            def __getattr__(self, name):
                return getattr(self.f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.f.close()

        def fake_open(path, mode="r", *a, **k):
            f = builtins.open(path, mode, *a, **k)  # noqa: SIM115
            return Full(f) if str(path).endswith("vectors.npy") and "w" in mode else f

        monkeypatch.setattr(st, "open", fake_open, raising=False)
    else:
        real = io_mod._atomic_open

        def atomic_open(path, *a, **k):
            if Path(path).name == STORE_JSON:
                raise full
            return real(path, *a, **k)

        monkeypatch.setattr(io_mod, "_atomic_open", atomic_open)
    with pytest.raises(FeatureStoreError, match="disk full") as info:
        extract_features(b, out, show_progress=False)
    assert "\n" not in str(info.value) and "intact" in str(info.value)
    monkeypatch.undo()
    assert _assert_whole(out, two_catalogues) == "A"
    _no_leftovers(out)


def test_vectors_are_never_written_through_a_writable_memory_map(tmp_path: Path, two_catalogues, monkeypatch):
    """A writable mmap turns ENOSPC into SIGBUS (failed on d95ed08, which used open_memmap)."""

    real_open_memmap = np.lib.format.open_memmap

    def open_memmap(filename, mode="r+", *a, **k):
        assert mode in ("r", "c"), f"open_memmap mode {mode}"
        return real_open_memmap(filename, mode, *a, **k)

    monkeypatch.setattr(np.lib.format, "open_memmap", open_memmap)
    real_memmap = np.memmap.__new__

    def memmap_new(cls, filename, dtype=np.uint8, mode="r+", *a, **k):
        assert mode in ("r", "c"), f"np.memmap mode {mode}"
        return real_memmap(cls, filename, dtype, mode, *a, **k)

    monkeypatch.setattr(np.memmap, "__new__", memmap_new)
    a, b, _ = two_catalogues
    extract_features(a, tmp_path / "f", show_progress=False, checkpoint_every=4)
    extract_features(b, tmp_path / "f", show_progress=False, checkpoint_every=4)
    assert _assert_whole(tmp_path / "f", two_catalogues) == "B"


# ------------------------------------------------------------------ tampered stores
def _tamper_vectors(out: Path, X: np.ndarray) -> None:
    p = store_paths(out)
    os.unlink(p.vectors)
    np.save(p.vectors, X)
    meta = json.loads((out / STORE_JSON).read_text())
    meta.update(dtype=str(X.dtype), dim=int(X.shape[1]) if X.ndim == 2 else meta["dim"])
    (out / STORE_JSON).write_text(json.dumps(meta))


def _tamper_header(out: Path, **changes) -> None:
    meta = json.loads((out / STORE_JSON).read_text())
    meta.update(changes)
    (out / STORE_JSON).write_text(json.dumps(meta))


def _tamper_ids(out: Path, text: str) -> None:
    p = store_paths(out).ids
    os.unlink(p)
    p.write_text(text)


TAMPERS = {
    "non-unit vectors x1000": (lambda o, X: _tamper_vectors(o, X * 1000), "not a unit vector"),
    "all-zero vectors": (lambda o, X: _tamper_vectors(o, np.zeros_like(X)), "not a unit vector"),
    "NaN vectors": (lambda o, X: _tamper_vectors(o, np.full_like(X, np.nan)), "NaN"),
    "integer vectors": (lambda o, X: _tamper_vectors(o, (X * 100).astype(np.int32)), "float32"),
    "float64 vectors": (lambda o, X: _tamper_vectors(o, X.astype(np.float64)), "float32"),
    "1-d vectors": (lambda o, X: _tamper_vectors(o, X.reshape(-1)), "matrix"),
    "512-d store, 1280-d extractor": (
        lambda o, X: _tamper_vectors(
            o, np.ascontiguousarray(X[:, :512] / np.linalg.norm(X[:, :512], axis=1)[:, None])
        ),
        "makes 1280-d vectors",
    ),
    "store.json a list": (lambda o, X: (o / STORE_JSON).write_text("[1, 2]"), "must be a JSON object"),
    "count 'forty'": (lambda o, X: _tamper_header(o, count="forty"), "'count' must be an integer"),
    "training null extractor": (lambda o, X: _tamper_header(o, extractor=None), "'extractor' must be"),
    "generation escapes": (lambda o, X: _tamper_header(o, generation="../../etc"), "bad generation"),
    "short ids row": (lambda o, X: _tamper_ids(o, "id,size,mtime_ns\na.png\n"), "line 2: 1 fields"),
    "size not a number": (lambda o, X: _tamper_ids(o, "id,size,mtime_ns\na.png,big,1\n"), "size must be"),
    "duplicate ids": (
        lambda o, X: _tamper_ids(o, "id,size,mtime_ns\n" + "a.png,1,1\n" * len(X)),
        "duplicate id",
    ),
    "id escaping the folder": (
        lambda o, X: _tamper_ids(
            o, "id,size,mtime_ns\n" + "".join(f"../{i}.png,1,1\n" for i in range(len(X)))
        ),
        "bad id",
    ),
    "ids header gone": (lambda o, X: _tamper_ids(o, ""), "not an ids table"),
    "npy header claims 10^12 rows": (
        lambda o, X: _tamper_header(o, count=10**12),
        "inconsistent",
    ),
}


@pytest.mark.parametrize("case", list(TAMPERS))
def test_tampered_store_is_one_clear_error(tmp_path: Path, synth_store: Path, case: str) -> None:
    """Non-unit / integer / all-zero vectors trained and scored 50-989; a 512-d store with a 1280-d
    extractor failed only at search; a list as store.json, count "forty" and bad ids.csv rows gave
    ValueError/IndexError/AttributeError tracebacks (failed on d95ed08 for each case but the
    row-count ones)."""
    out = tmp_path / "f"
    shutil.copytree(synth_store, out)
    X = np.asarray(FeatureStore.open(out).vectors, np.float32)
    tamper, message = TAMPERS[case]
    tamper(out, X)
    with pytest.raises(FeatureStoreError, match=message) as info:
        load_features(out)
    assert "\n" not in str(info.value)


def test_npy_header_claiming_huge_shape_is_refused_before_reading(tmp_path: Path, synth_store: Path) -> None:
    out = tmp_path / "f"
    shutil.copytree(synth_store, out)
    p = store_paths(out).vectors
    raw = p.read_bytes()
    n = len(FeatureStore.open(out))
    head = raw[:128].replace(f"({n}, 1280)".encode(), b"(10000000000, 1280)"[: len(f"({n}, 1280)")])
    p.unlink()
    with open(p, "wb") as f:
        np.lib.format.write_array_header_1_0(
            f, {"descr": "<f4", "fortran_order": False, "shape": (10**12, 1280)}
        )
        f.write(raw[len(head) :])
    _tamper_header(out, count=10**12)
    with pytest.raises(FeatureStoreError, match="bytes, its header needs"):
        FeatureStore.open(out, mmap=False)


def test_store_written_by_the_previous_format_still_opens_and_upgrades(
    tmp_path: Path, synth_catalogue
) -> None:
    """Format 1 (vectors.npy, ids.csv, store.json side by side), as written by d95ed08."""
    root, _ = synth_catalogue
    fresh = tmp_path / "fresh"
    extract_features(root, fresh, show_progress=False)
    ids, X, _ident = load_features(fresh)
    old = tmp_path / "v1"
    old.mkdir()
    np.save(old / "vectors.npy", X)
    with open(old / "ids.csv", "w", newline="") as f:
        import csv

        w = csv.writer(f)
        w.writerow(["id", "size", "mtime_ns"])
        for rel in ids:
            st = os.stat(root / rel)
            w.writerow([rel, st.st_size, st.st_mtime_ns])
    meta = json.loads((fresh / STORE_JSON).read_text())
    del meta["generation"]
    meta["version"] = 1
    (old / STORE_JSON).write_text(json.dumps(meta))
    ids1, X1, _ = load_features(old)
    assert ids1 == ids and np.array_equal(X1, X)
    res = extract_features(root, old, show_progress=False)  # format 1 -> 2, nothing re-embedded
    assert res.n_embedded == 0 and res.n_reused == len(ids)
    assert json.loads((old / STORE_JSON).read_text())["version"] == 2
    assert load_features(old)[0] == ids
    # the compatibility links: tools reading vectors.npy / ids.csv directly see the live generation
    assert os.path.samefile(old / "vectors.npy", store_paths(old).vectors)


def test_legacy_npy_folder_with_nan_is_a_clear_error(tmp_path: Path) -> None:
    np.save(tmp_path / "a.jpg.npy", np.full((4,), np.nan, np.float32))
    np.save(tmp_path / "b.jpg.npy", np.ones((4,), np.float32))
    with pytest.raises(FeatureStoreError, match="NaN"):
        load_features(tmp_path)


def test_readers_follow_a_concurrent_commit(tmp_path: Path) -> None:
    """A reader never sees a mix while a writer commits over and over (store.json is followed)."""
    rng = np.random.default_rng(0)
    out = tmp_path / "f"

    def make(n: int) -> tuple[list[str], np.ndarray]:
        X = rng.standard_normal((n, 8)).astype(np.float32)
        return [f"{n}-{i}.png" for i in range(n)], X / np.linalg.norm(X, axis=1, keepdims=True)

    FeatureStore.write(out, *make(5), {"name": "test", "dim": 8})
    stop = threading.Event()

    def writer() -> None:
        k = 0
        while not stop.is_set():
            FeatureStore.write(out, *make(5 + k % 7), {"name": "test", "dim": 8})
            k += 1

    t = threading.Thread(target=writer)
    t.start()
    try:
        for _ in range(200):
            s = FeatureStore.open(out)
            n = len(s)
            assert all(i.startswith(f"{n}-") for i in s.ids) and s.vectors.shape == (n, 8)
    finally:
        stop.set()
        t.join()


UPDATE_KILL_SCRIPT = """
import os, signal, sys
import varsitysrch._store as st
step = os.environ.get("KILL_AT_STEP")
if step:
    st._commit_hook = lambda name: name == step and os.kill(os.getpid(), signal.SIGKILL)
from varsitysrch import update_catalogue
print("start", flush=True)
update_catalogue(*sys.argv[1:5], show_progress=False, batch_size=2, num_workers=1)
"""


@pytest.mark.parametrize("step", ["vectors", "header", "cleanup", "t=0.8", "t=2.5"])
def test_kill_9_of_update_leaves_a_whole_store_and_a_loadable_model(
    tmp_path: Path, two_catalogues, step: str
) -> None:
    """A kill -9 of update at the wrong moment left 320 vectors and 300 ids, and every later
    extract/train/update refused the store (failed on d95ed08)."""
    import time

    from varsitysrch import train_clusters, update_catalogue

    a, b, _ = two_catalogues
    out, model, csv_path = tmp_path / "f", tmp_path / "m.vsm", tmp_path / "c.csv"
    extract_features(a, out, show_progress=False)
    train_clusters(out, model, csv_path, 2, show_progress=False)
    env = {**os.environ}
    if not step.startswith("t="):
        env["KILL_AT_STEP"] = step
    p = subprocess.Popen(
        [PY, "-c", UPDATE_KILL_SCRIPT, str(b), str(out), str(model), str(csv_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    if step.startswith("t="):
        assert p.stdout is not None
        p.stdout.readline()
        time.sleep(float(step[2:]))
        p.send_signal(signal.SIGKILL)
    p.communicate(timeout=240)
    if not step.startswith("t="):
        assert p.returncode == -signal.SIGKILL
    got = _assert_whole(out, two_catalogues)
    assert got == {"vectors": "A", "header": "A", "cleanup": "B"}.get(step, got)
    report = update_catalogue(b, out, model, csv_path, show_progress=False)  # the rerun completes it
    assert _assert_whole(out, two_catalogues) == "B" and report.n_images == 11
    _no_leftovers(out)


RACE_SCRIPT = """
import sys
from varsitysrch import extract_features
from varsitysrch._errors import FeatureStoreError
try:
    extract_features(sys.argv[1], sys.argv[2], show_progress=False, batch_size=2, num_workers=1)
except FeatureStoreError as exc:
    print("REFUSED", exc)
    sys.exit(2)
"""


def test_two_extracts_at_once_never_mix(tmp_path: Path, two_catalogues) -> None:
    """Two extracts into one store, started together: in 80 runs on d95ed08, 2 gave one catalogue's
    ids with the other's vectors, 4 an empty store, 3 crashed.  Now one runs, the other is refused
    (or runs after it); the store always holds one catalogue whole."""
    a, b, _ = two_catalogues
    for round_ in range(2):
        out = tmp_path / f"f{round_}"
        procs = [
            subprocess.Popen(
                [PY, "-c", RACE_SCRIPT, str(root), str(out)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for root in ((a, b) if round_ % 2 == 0 else (b, a))
        ]
        results = [(p.wait(timeout=240), p.communicate()) for p in procs]
        codes = [c for c, _ in results]
        assert sorted(codes) in ([0, 0], [0, 2]), results
        for code, (stdout, _) in results:
            if code == 2:
                assert "being written by another process (pid" in stdout
        _assert_whole(out, two_catalogues)
        _no_leftovers(out)


def test_store_killed_before_its_first_commit_is_not_read_as_a_legacy_folder(
    tmp_path: Path, two_catalogues
) -> None:
    """Checkpoints of a first run killed before any commit were read back as a legacy per-image
    .npy folder (parts/part-00000.npy as one image; failed on d95ed08)."""
    a, _, _ = two_catalogues
    out = tmp_path / "f"
    p = _extract_proc(a, out, KILL_AT_STEP="ids")
    p.communicate(timeout=180)
    assert p.returncode == -signal.SIGKILL and not (out / STORE_JSON).exists()
    with pytest.raises(FeatureStoreError, match="unfinished feature store"):
        load_features(out)
    res = extract_features(a, out, show_progress=False)
    assert res.n_embedded == 0 and _assert_whole(out, two_catalogues) == "A"
    _no_leftovers(out)


def test_unchanged_rerun_keeps_the_generation(tmp_path: Path, two_catalogues) -> None:
    """A rerun on an unchanged folder rewrites only store.json (d95ed08 rewrote every vector)."""
    a, _, _ = two_catalogues
    out = tmp_path / "f"
    extract_features(a, out, show_progress=False)
    gen = store_paths(out).generation
    ino = os.stat(store_paths(out).vectors).st_ino
    res = extract_features(a, out, show_progress=False)
    assert res.n_embedded == 0 and store_paths(out).generation == gen
    assert os.stat(store_paths(out).vectors).st_ino == ino
    assert _assert_whole(out, two_catalogues) == "A"
