"""Where the benchmarks find their data: one convention for every script (not a benchmark itself).

* ``--data DIR`` or ``$VARSITYSRCH_DATA``: the folder holding the dev sets ``clothing-small/``,
  ``grocery-train/`` and ``fashion-dev/`` (each with its ``manifest.csv``; docs/benchmarks.md says
  where each comes from and under which licence).  There is no default: a script that needs a
  dev set and gets no folder stops with one line naming the flag and the variable.
* ``--work DIR``: caches (feature stores, models, planted copies); default
  ``<system temp>/varsitysrch-<script>``, so a rerun reuses what an earlier run computed.

Scripts that only use generated data (or the shipped ``examples/catalog``) take neither.
Only the standard library is imported here, so ``--help`` and the errors stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

DATA_ENV = "VARSITYSRCH_DATA"
DEV_SETS = ("clothing-small", "grocery-train", "fashion-dev")
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"})
HOWTO = "see docs/benchmarks.md, 'Data sets'"


def fail(prog: str, message: str) -> NoReturn:
    """One line on stderr, exit status 2 (as argparse does for a usage error)."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def add_data_argument(ap: argparse.ArgumentParser, sets: Sequence[str] = DEV_SETS) -> None:
    ap.add_argument(
        "--data",
        default=None,
        metavar="DIR",
        help=f"folder holding the dev sets ({', '.join(s + '/' for s in sets)}); "
        f"default ${DATA_ENV}; {HOWTO}",
    )


def add_work_argument(ap: argparse.ArgumentParser, prog: str, what: str = "caches") -> None:
    default = Path(tempfile.gettempdir()) / f"varsitysrch-{Path(prog).stem.replace('_', '-')}"
    ap.add_argument(
        "--work", type=Path, default=default, metavar="DIR", help=f"folder for {what} (default {default})"
    )


def data_root(prog: str, value: str | None, sets: Sequence[str], *, manifest: bool = True) -> Path:
    """The dev-set folder from ``--data`` or ``$VARSITYSRCH_DATA``, checked to hold ``sets``.

    Every refusal is one line naming ``--data`` and ``VARSITYSRCH_DATA``.
    """
    src = "--data" if value else DATA_ENV
    value = value or os.environ.get(DATA_ENV) or None
    need = ", ".join(s + "/" for s in sets)
    if not value:
        fail(
            prog, f"no data folder: pass --data DIR or set {DATA_ENV} to the folder holding {need} ({HOWTO})"
        )
    root = Path(value).expanduser()
    if not root.is_dir():
        fail(prog, f"{src} {value!r} is not a folder (--data / {DATA_ENV}: the folder holding {need})")
    for s in sets:
        if not (root / s).is_dir():
            fail(
                prog, f"{src} {value!r} has no {s}/ (--data / {DATA_ENV}: the folder holding {need}; {HOWTO})"
            )
        if manifest and not (root / s / "manifest.csv").is_file():
            fail(prog, f"{s}/ under {src} {value!r} has no manifest.csv (columns path,label,...; {HOWTO})")
    return root


def image_folder(prog: str, img_dir: str | None, data: str | None, dev_set: str = "clothing-small") -> Path:
    """A script's ``IMG_DIR``: the positional argument if given, else ``<data>/<dev_set>``."""
    if img_dir:
        p = Path(img_dir).expanduser()
        if not p.is_dir():
            fail(prog, f"IMG_DIR {img_dir!r} is not a folder")
        return p
    if not (data or os.environ.get(DATA_ENV)):
        fail(
            prog,
            f"no images: give IMG_DIR, or --data DIR / {DATA_ENV} for {dev_set}/ "
            f"(e.g. IMG_DIR examples/catalog for a smoke run; {HOWTO})",
        )
    return data_root(prog, data, [dev_set], manifest=False) / dev_set


def feature_store(data: Path, dev_set: str, work: Path, log: Callable[[str], None] | None = None) -> Path:
    """``<work>/features/<dev_set>``: the dev set extracted with the default extractor (cached).

    ``extract_features`` is incremental: a rerun only checks the files and embeds nothing.
    """
    from varsitysrch import extract_features

    out = work / "features" / dev_set
    if log is not None and not (out / "store.json").exists():
        log(f"extracting {data / dev_set} into {out} (default extractor; once, then cached)")
    out.parent.mkdir(parents=True, exist_ok=True)
    extract_features(data / dev_set, out, show_progress=False)
    return out


def image_ids(root: Path) -> list[str]:
    """Sorted ids (relative POSIX paths) of the image files under ``root``, hidden ones skipped.

    The same ids and order as the library gives the photos of the dev sets (JPEG/PNG/WebP/...),
    without importing its private listing.
    """
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = Path(dirpath).relative_to(root)
        out += [
            (rel / f).as_posix()
            for f in filenames
            if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES
        ]
    return sorted(out)


def normalize_rows(X: Any) -> Any:
    """L2-normalised float32 rows (zero rows stay zero): the library's convention, in numpy."""
    import numpy as np

    X = np.asarray(X, np.float32)
    return (X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)).astype(np.float32, copy=False)


def log_stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
