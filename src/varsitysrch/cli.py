"""The ``varsitysrch`` command line (typer).

Heavy modules (numpy, onnxruntime, scikit-learn, faiss, PIL) are imported inside the
commands, so ``varsitysrch --help`` is instant.

The contract every command keeps:

* one line per step on standard output (what was done, counts, where it was written);
  results (search hits, the choose-k table, JSON) are always printed, the step lines are
  silenced by ``--quiet``;
* progress bars on standard error, only when it is a terminal (never in a log file) and
  not with ``--quiet``;
* an error the user can cause (any :class:`~varsitysrch.VarsitysrchError`, or an OS error
  such as a missing file or a full disk) prints ``error: <one line>`` on standard error and
  exits with status 2; ``-v`` adds the traceback and the library's log, ``-vv`` debug log.
  ``-v``/``-q`` work before the command (``varsitysrch -v search ...``) and after it.
* tables never cut ids: when standard output is not a terminal, or with ``--plain``, the
  output is tab-separated with full ids; ``--json`` prints JSON.
* nothing from a file name reaches the terminal raw: control characters (C0, DEL, C1) are
  written as ``\\x1b`` / ``\\u009b`` escapes and bytes that are not UTF-8 as ``\\xNN`` in every
  table, TSV, JSON, step, warning and error line (rich markup in an id is shown, not applied).
* the library's warnings go to standard error; with ``--quiet`` each kind (e.g. "skipped
  <file>: <reason>") is shown once at the end, with the count of the others.
* ``serve`` checks its port (1-65535) and the files and folders it names before the model loads.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ._errors import VarsitysrchError
from ._version import __version__

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

app = typer.Typer(
    name="varsitysrch",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # plain help: flags are shown as flags (``--exact``), not as ``--exact <bool>``
    rich_markup_mode=None,
)

Verbose = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        show_default=False,
        help="-v: the library's log and tracebacks of errors; -vv: debug log.",
    ),
]
Quiet = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="No progress bars, no step lines; each kind of warning once, with a count (results stay).",
    ),
]
Plain = Annotated[
    bool, typer.Option("--plain", help="Tab-separated output with full ids (the default when piped).")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON.")]


class _State:
    """Options given before the command (``varsitysrch -v search ...``), and the effective ones."""

    verbose = 0
    quiet = False


_state = _State()


# ------------------------------------------------------------------ the app
def _version(value: bool) -> None:
    if value:
        typer.echo(f"varsitysrch {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    verbose: Verbose = 0,
    quiet: Quiet = False,
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Product image search: embed a catalogue, cluster it, search it.

    Steps: extract (images -> feature store), choose-k (how many clusters), train (store ->
    model file + clusters CSV), search / serve, update (a changed catalogue, no retraining).
    An error you can cause prints one line and exits with status 2; -v adds the traceback.
    """
    _state.verbose = verbose
    _state.quiet = quiet


class _SafeFormatter(logging.Formatter):
    """Log lines whose message (file names in it) cannot write control characters to the terminal."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return _printable(super().formatMessage(record))


class _HoldWarnings(logging.Filter):
    """``--quiet``: the library's warnings are held back and counted by kind (logger and message
    template, e.g. one per skipped file); at the end each kind is shown once, with how many more of
    it there were.  Errors pass at once."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[tuple[str, str], list[Any]] = {}  # kind -> [first record, count]

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        kind = self.kinds.setdefault((record.name, str(record.msg)), [record, 0])
        kind[1] += 1
        return False

    def flush_to(self, handler: logging.Handler) -> None:
        for first, count in self.kinds.values():
            handler.emit(first)  # past the filter
            if count > 1:
                more = f"{count - 1:,} more warnings like the one above not shown (--quiet; -v shows them)"
                typer.echo(f"warning: {more}", err=True)
        self.kinds.clear()


@contextlib.contextmanager
def _logging(verbose: int, quiet: bool = False) -> Iterator[None]:
    """The library's log on stderr (warnings always; -v info; -vv debug), restored afterwards.

    With ``--quiet`` (and no ``-v``) each kind of warning is shown once, with a count of the rest.
    """
    logger = logging.getLogger("varsitysrch")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_SafeFormatter("%(levelname)s %(name)s: %(message)s"))
    hold = _HoldWarnings() if quiet and verbose <= 0 else None
    if hold is not None:
        handler.addFilter(hold)
    level = logging.WARNING if verbose <= 0 else logging.INFO if verbose == 1 else logging.DEBUG
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        if hold is not None:
            hold.flush_to(handler)


def _one_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return "; ".join(lines) if lines else type(exc).__name__


#: The library's parameter names -> this CLI's parameter names (the function arguments of the commands
#: below), where they differ; the error line shows the flag (``-k/--num-clusters``) or argument
#: (``FEATURES_DIR``) the user typed instead (``varsitysrch._errors.user_message``).
LIBRARY_NAMES = {
    "img_folder": "img_dir",
    "save_to": "features_dir",
    "features_folder": "features_dir",
    "model_filename": "model",
    "model_file": "model",
    "csv_filename": "csv",
    "csv_file": "csv",
    "num_clusters": "k",
    "top_n": "n",
    "num_workers": "workers",
    "image_root": "images",
    "plot_path": "plot",
    "scores_path": "scores",
    "random_state": "seed",
    "n_images": None,
}


def _flag_names(fn: Callable[..., Any]) -> dict[str, str]:
    """Library parameter -> what the user types for it in the command ``fn``: its flags
    (``-k/--num-clusters``) or its argument as --help shows it (``FEATURES_DIR``); a library name with
    no counterpart is left as it is."""
    import typing

    from typer.models import ArgumentInfo, OptionInfo

    shown: dict[str, str] = {}
    for name, hint in typing.get_type_hints(fn, include_extras=True).items():
        for info in getattr(hint, "__metadata__", ()):
            if isinstance(info, OptionInfo):
                # typer.Option("--num-clusters", "-k") in Annotated: the first one lands in ``default``
                first = [info.default] if isinstance(info.default, str) else []
                decls = [d for d in (*first, *(info.param_decls or ())) if d.startswith("-")]
                decls = decls or ["--" + name.replace("_", "-")]
                shown[name] = "/".join(sorted(decls, key=len))
            elif isinstance(info, ArgumentInfo):
                shown[name] = name.upper()
    out = {lib: shown[cli] for lib, cli in LIBRARY_NAMES.items() if cli is not None and cli in shown}
    for name, flag in shown.items():  # the same Python name in both (max_clusters, thumb_size, ...)
        if "_" in name:  # never a plain word ("model", "csv", "out") of a message
            out.setdefault(name, flag)
    return out


def _command(name: str | None = None) -> Callable[[F], F]:
    """``app.command`` plus the CLI contract: -v/-q from before the command, errors -> exit 2."""

    def deco(fn: F) -> F:
        flags = _flag_names(fn)  # what error lines call the library's parameters

        @functools.wraps(fn)
        def wrapper(**kw: Any) -> Any:
            verbose = _state.verbose + int(kw.get("verbose") or 0)
            quiet = _state.quiet or bool(kw.get("quiet"))
            saved = (_state.verbose, _state.quiet)
            _state.verbose, _state.quiet = verbose, quiet
            try:
                with _logging(verbose, quiet):
                    return fn(**kw)
            except KeyboardInterrupt:
                typer.echo("interrupted", err=True)
                raise typer.Exit(130) from None
            except (VarsitysrchError, OSError) as exc:
                if verbose:
                    traceback.print_exc(file=sys.stderr)
                from ._errors import user_message

                typer.echo(f"error: {_printable(user_message(exc, flags))}", err=True)
                raise typer.Exit(2) from None
            finally:
                _state.verbose, _state.quiet = saved

        app.command(name)(wrapper)
        return fn

    return deco


# ------------------------------------------------------------------ output helpers
def _say(message: str) -> None:
    """A step line (stdout), silenced by --quiet."""
    if not _state.quiet:
        typer.echo(_printable(message, keep_newlines=True))


def _warn(message: str) -> None:
    """A warning (stderr), shown even with --quiet."""
    typer.echo(f"warning: {_printable(message, keep_newlines=True)}", err=True)


#: Control characters (C0, DEL, C1) as escapes: a file name never moves the cursor, rings the
#: bell, sets a window title or starts a new line on the user's terminal
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_DEL_C1 = re.compile("[\x7f-\x9f]")


def _escape_control(m: re.Match[str]) -> str:
    ch = m.group()
    return f"\\x{ord(ch):02x}" if ord(ch) < 0x80 else f"\\u{ord(ch):04x}"


def _printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` safe for a terminal: bytes that are not UTF-8 (lone surrogates) as ``\\xNN``, control
    characters as ``\\x1b`` (C0, DEL) or ``\\u009b`` (C1); ``keep_newlines``: a message's own lines."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that is no escaped byte (from a JSON \\ud800 escape)
        shown = text.encode("utf-8", "backslashreplace").decode("utf-8")
    else:
        shown = raw.decode("utf-8", "backslashreplace")
    if keep_newlines:
        return "\n".join(_CONTROL.sub(_escape_control, line) for line in shown.split("\n"))
    return _CONTROL.sub(_escape_control, shown)


def _wrap(text: str, width: int = 100) -> str:
    import textwrap

    return textwrap.fill(text, width=width, subsequent_indent="  ", break_on_hyphens=False)


def _bars() -> bool:
    """Whether the library should draw progress bars: not --quiet, and stderr a terminal."""
    from ._progress import bars_enabled

    return bars_enabled(not _state.quiet)


def _stdout_is_terminal() -> bool:
    return bool(getattr(sys.stdout, "isatty", None) and sys.stdout.isatty())


def _call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call the library; its own step lines (stdout) are dropped: the CLI prints its own.

    They are logged at INFO as well, so ``-v`` still shows them (on stderr); dropping them
    keeps ``--json`` and ``--plain`` output machine-readable.
    """
    with contextlib.redirect_stdout(io.StringIO()):
        return fn(*args, **kwargs)


def _echo_json(obj: Any) -> None:
    text = json.dumps(obj, indent=2, ensure_ascii=False, allow_nan=False, default=str)
    # a lone surrogate (non-UTF-8 file name) becomes the JSON escape \udcXX: same str back; DEL and
    # C1 controls (json.dumps escapes only C0) become \u007f..\u009f (they occur only inside strings)
    text = _DEL_C1.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
    typer.echo(text.encode("utf-8", "backslashreplace").decode("utf-8"))


def _tsv_cell(value: Any) -> str:
    # a backslash in an id is doubled first, so the escapes below (and \\xNN) stay unambiguous
    s = str(value).replace("\\", "\\\\").replace("\t", "\\t").replace("\n", "\\n").replace("\r", "\\r")
    return _printable(s)


def _echo_tsv(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    typer.echo("\t".join(header))
    for row in rows:
        typer.echo("\t".join(_tsv_cell(c) for c in row))


def _hit_dict(h: Any) -> dict[str, Any]:
    if hasattr(h, "to_dict"):
        return dict(h.to_dict())
    return {k: getattr(h, k, None) for k in ("rank", "score", "cluster", "image", "path")}


def render_hits(hits: Sequence[Any], title: str, console: Any = None) -> None:
    """The results as a rich table whose id and path columns wrap instead of being cut."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    rows = [_hit_dict(h) for h in hits]
    with_path = any(r.get("path") for r in rows)
    # Text, not str: rich reads "[...]" in a str as markup (an id "[/]" would raise, "[blink]" style)
    t = Table(title=Text(_printable(title)), title_justify="left")
    t.add_column("rank", justify="right", no_wrap=True)
    t.add_column("score", justify="right", no_wrap=True)
    t.add_column("cluster", justify="right", no_wrap=True)
    t.add_column("image", overflow="fold", ratio=1)
    if with_path:
        t.add_column("path", overflow="fold", ratio=1)
    with_match = any(r.get("match") for r in rows)
    if with_match:
        t.add_column("match", no_wrap=True)
    for r in rows:
        cells = [str(r["rank"]), f"{r['score']:.4f}", str(r["cluster"]), _printable(str(r["image"]))]
        if with_path:
            cells.append(_printable(str(r.get("path") or "")))
        if with_match:
            cells.append(str(r.get("match") or ""))
        t.add_row(*(Text(c) for c in cells))
    (console or Console()).print(t)


def cluster_warnings(k: int, sizes: Sequence[int]) -> list[str]:
    """Warnings for a k that leaves clusters too small to be useful (empty list: none)."""
    n = int(sum(sizes))
    if n == 0 or k <= 0:
        return []
    hint = "try `varsitysrch choose-k` for a k that fits"
    if k >= n:
        return [f"k={k} on {n} images: one image per cluster, so clustering does nothing; {hint}"]
    small, big = min(sizes), max(sizes)
    if n / k < 5:
        return [
            f"k={k} on {n} images: {n / k:.1f} images per cluster on average (sizes {small}..{big}); "
            f"clusters this small split look-alikes apart; {hint}"
        ]
    singles = sum(1 for s in sizes if s <= 1)
    if singles >= max(2, k // 10):
        return [f"{singles} of {k} clusters hold at most one image; {hint}"]
    return []


_K_HEADERS = {"k": "k", "inertia": "inertia", "silhouette": "silh", "davies_bouldin": "DB"}


def _k_header(key: str) -> str:
    if key in _K_HEADERS:
        return _K_HEADERS[key]
    if key.startswith("recall_at_10_nprobe"):
        return "R" + key.removeprefix("recall_at_10_nprobe")
    if key.startswith("scanned_nprobe"):
        return "S" + key.removeprefix("scanned_nprobe")
    return key


def _k_cell(key: str, v: Any) -> str:
    if v is None or (isinstance(v, float) and v != v):
        return "-"
    if key == "k":
        return str(v)
    if key == "inertia":
        return f"{v:.5g}"
    if key.startswith("scanned_nprobe"):
        return f"{100 * v:.1f}%"
    return f"{v:.3f}"


def k_table(rows: Sequence[dict[str, Any]], recommended_k: int, top: int = 10) -> str:
    """The choose-k table (from ``KSelection.to_rows()``): short headers, a legend, <= 100 columns."""
    if not rows:
        return "(no k scored)"
    keys = list(rows[0])
    head = [_k_header(k) for k in keys]
    body = [[_k_cell(key, r.get(key)) for key in keys] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
    lines = ["  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
    for r, row in zip(rows, body, strict=True):
        mark = "  <- recommended" if r.get("k") == recommended_k else ""
        lines.append("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) + mark)
    legend = []
    if "silhouette" in keys:
        legend.append("silh  silhouette, -1..1: higher = better separated (under ~0.25: weak structure)")
    if "davies_bouldin" in keys:
        legend.append("DB    Davies-Bouldin index: lower = better separated")
    if any(k.startswith("recall_at_10_nprobe") for k in keys):
        legend.append(
            f"Rn    recall@{top} when a search scans the n nearest clusters (share of the exact top {top})"
        )
    if any(k.startswith("scanned_nprobe") for k in keys):
        legend.append("Sn    share of the catalogue a search scans with n clusters (its cost vs a full scan)")
    return "\n".join(lines + legend)


# ------------------------------------------------------------------ commands
@_command()
def extract(
    img_dir: Annotated[Path, typer.Argument(help="Folder of catalogue images (searched recursively).")],
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder to write (or update).")],
    extractor: Annotated[
        str,
        typer.Option(
            help="efficientnet-lite0, efficientnet-lite1 or -lite2 (extra backbones), ensemble-lite0-lite2 "
            "(both networks; extra backbones), mobilenet-v2, vgg16-block5pool or onnx:PATH."
        ),
    ] = "efficientnet-lite0",
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 8,
    workers: Annotated[
        int | None, typer.Option(help="Pipeline lanes, each decodes and embeds (default: CPUs, at most 8).")
    ] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads per lane.")] = None,
    float16: Annotated[
        bool, typer.Option("--float16", help="Store vectors as float16 (half the size).")
    ] = False,
    weights: Annotated[Path | None, typer.Option(help="Weights file (vgg16-block5pool).")] = None,
    engine: Annotated[str, typer.Option(help="local, or dask (needs --scheduler).")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="dask.distributed scheduler address.")] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="Let a folder with no readable image empty an existing store (refused otherwise).",
        ),
    ] = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Embed every image of IMG_DIR into the feature store FEATURES_DIR (reruns only embed changes)."""
    from . import extract_features

    kw: dict[str, Any] = {}
    if weights is not None:
        kw["weights"] = str(weights)
    if engine != "local" or scheduler is not None:
        kw["engine"], kw["scheduler"] = engine, scheduler
    if allow_empty:
        kw["allow_empty"] = True
    res = _call(
        extract_features,
        img_dir,
        features_dir,
        extractor=extractor,
        batch_size=batch_size,
        num_workers=workers,
        threads=threads,
        dtype="float16" if float16 else "float32",
        show_progress=_bars(),
        **kw,
    )
    _say(res.summary())
    if res.n_skipped:
        _say(f"{res.n_skipped} unreadable files skipped: see {Path(features_dir) / 'skipped.csv'}")


def _check_train_outputs(model: Path, csv: Path | None, force: bool, *, unrecorded_ok: bool = False) -> Path:
    """The CSV ``train`` (or ``update``) writes (default: beside the model, its name), once the outputs
    are safe to write: their folders exist (a typo creates nothing), and an existing CSV is this
    model's own (the model records its CSV's SHA-256) or ``--force`` was given.  ``unrecorded_ok``
    (``update``): a model older than the CSV hash may rewrite the CSV it names."""
    from ._errors import InvalidArgumentError, VarsitysrchError
    from ._io import check_output_folder
    from ._modelfile import csv_matches_model, load_model

    check_output_folder(model, "model_filename")
    csv = model.with_suffix(".csv") if csv is None else csv
    check_output_folder(csv, "csv_filename")
    if force or not csv.exists() or csv.resolve() == model.resolve():
        return csv
    mine: bool | None = False
    if model.is_file():
        try:
            mine = csv_matches_model(load_model(model), csv)
        except VarsitysrchError:
            mine = False
    if mine or (mine is None and unrecorded_ok):
        return csv
    whose = f"was not written with {str(model)!r}" if model.is_file() else "belongs to no model at --model"
    raise InvalidArgumentError(
        f"csv_filename {str(csv)!r} exists and {whose} (another model's CSV, or another file); choose "
        "another name with -c/--csv, or pass --force to replace it",
        param="csv_filename",
    )


@_command()
def train(
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file to write.")] = Path("model.vsm"),
    csv: Annotated[
        Path | None,
        typer.Option("--csv", "-c", help="Assignments CSV to write (default: the model's name, .csv)."),
    ] = None,
    k: Annotated[int, typer.Option("--num-clusters", "-k", help="Number of clusters.")] = 20,
    n_components: Annotated[int | None, typer.Option(help="Cluster in a PCA space of this size.")] = None,
    n_init: Annotated[int, typer.Option(help="K-means restarts.")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    backend: Annotated[str, typer.Option(help="auto, sklearn or faiss.")] = "auto",
    engine: Annotated[str, typer.Option(help="local, or dask: assign clusters on a Dask cluster.")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="dask.distributed scheduler address.")] = None,
    attributes: Annotated[
        Path | None,
        typer.Option(
            "--attributes", help="CSV image,<columns>: attributes for search --where, kept in the model."
        ),
    ] = None,
    query_expansion: Annotated[
        int | None,
        typer.Option(help="Searches' query expansion neighbours (default 0: plain cosine; 2 is opt-in)."),
    ] = None,
    search_pca: Annotated[
        bool,
        typer.Option(
            "--search-pca",
            help="Rank in a catalogue-centred PCA space of 128 components (opt-in; default: plain cosine "
            "on the raw vectors, docs/quality.md).",
        ),
    ] = False,
    rerank_graph: Annotated[
        bool | None,
        typer.Option(
            "--rerank-graph/--no-rerank-graph",
            help="Store the catalogue's neighbour graph, so that searches re-rank (k-reciprocal; default: "
            "on up to 200,000 images, opt-in above, where the model has an IVF; about 160 bytes per "
            "image; update keeps it up to date).",
            show_default=False,
        ),
    ] = None,
    colour_labels: Annotated[
        str | None,
        typer.Option(
            "--colour-labels",
            metavar="COLUMN",
            help="An --attributes column naming each product's colour: search --colour match then ranks "
            "by a colour classifier learned from it (docs/quality.md).",
        ),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a CSV that belongs to another model.")
    ] = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Train K-means on FEATURES_DIR; write the model file and the image-to-cluster CSV.

    The CSV defaults to the model's name (-m shop.vsm -> shop.csv); a CSV of another model is never
    replaced without --force, and folders that do not exist are not created.
    """
    from . import train_clusters
    from ._postprocess import SEARCH_PCA_DIM

    csv = _check_train_outputs(model, csv, force)

    attrs = None
    if attributes is not None:  # joined first: a bad file fails before K-means, the join is reported
        from ._attributes import Attributes
        from ._store import FeatureStore

        attrs = _call(Attributes.from_csv, attributes, _call(FeatureStore.open, features_dir).ids)
        if attrs.report is not None:
            kinds = ", ".join(f"{n} ({c.kind})" for n, c in attrs.columns.items())
            _say(f"{attrs.report.summary()}; columns: {kinds}")
    m = _call(
        train_clusters,
        features_dir,
        model,
        csv,
        k,
        attributes=attrs,
        n_components=n_components,
        n_init=n_init,
        random_state=seed,
        backend=backend,
        engine=engine,
        scheduler=scheduler,
        query_expansion=query_expansion,
        search_pca=SEARCH_PCA_DIM if search_pca else None,
        rerank_graph=rerank_graph,
        colour_labels=colour_labels,
        show_progress=_bars(),
    )
    import numpy as np

    sizes = [int(s) for s in np.bincount(np.asarray(m.labels_), minlength=k)]
    backend_used = getattr(m, "backend_", backend)
    seconds = float(getattr(m, "fit_seconds_", 0.0))
    _say(
        f"trained k={k} on {sum(sizes)} images ({backend_used}, {seconds:.1f}s); cluster sizes "
        f"{min(sizes)}..{max(sizes)} (median {int(np.median(sizes))}); wrote {model} and {csv}"
    )
    for w in cluster_warnings(k, sizes):
        _warn(w)


def _colour_weight(value: str | None, match: bool) -> float | None:
    """``--colour``: ``match`` (the page's "match colour" weight), ``off`` or a weight; ``None``:
    the Searcher's default.  ``--match-colour`` is the earlier flag for ``--colour match``."""
    from ._colour import MATCH_COLOUR_WEIGHT
    from ._errors import InvalidArgumentError

    if value is None:
        return MATCH_COLOUR_WEIGHT if match else None
    word = value.strip().lower()
    if word in ("match", "on"):
        return MATCH_COLOUR_WEIGHT
    if word in ("off", "none", "no"):
        return 0.0
    try:
        return float(word)  # checked by SearchOptions (colour_weight in [0, 1])
    except ValueError:
        raise InvalidArgumentError(
            f"--colour must be 'match', 'off' or a colour_weight in [0, 1]; got {value!r}"
        ) from None


@_command()
def search(
    query: Annotated[Path, typer.Argument(help="Query image.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file.")] = Path("model.vsm"),
    csv: Annotated[
        Path | None, typer.Option("--csv", "-c", help="Assignments CSV (checked against the model).")
    ] = None,
    n: Annotated[int, typer.Option("--top-n", "-n", help="Number of results.")] = 5,
    nprobe: Annotated[
        int | None,
        typer.Option(help="Clusters to scan, or IVF lists for a large catalogue (default: calibrated)."),
    ] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Scan the whole catalogue.")] = False,
    images: Annotated[
        Path | None,
        typer.Option("--images", help="The catalogue's image folder: hits then show their file's path."),
    ] = None,
    extractor: Annotated[
        str | None,
        typer.Option(help="Query extractor, checked against the model (needed for an onnx:PATH model)."),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option("--features", help="Feature store of a model without its index (default: beside it)."),
    ] = None,
    colour: Annotated[
        str | None,
        typer.Option(
            "--colour",
            "--color",
            "--colour-weight",  # the earlier spelling (a weight)
            "--color-weight",
            metavar="match|off|WEIGHT",
            help="Match the product's colour too: 'match' (weight 0.15), a weight in 0..1, or 'off'.",
        ),
    ] = None,
    match_colour: Annotated[bool, typer.Option("--match-colour", "--match-color", hidden=True)] = False,
    views: Annotated[
        str,
        typer.Option(
            help="Query views: auto (crops for a shop photo against a studio catalogue), none (the whole "
            "image, the default), crops (whole + five 70 % crops, best per image), flip, crops+flip."
        ),
    ] = "none",
    min_confidence: Annotated[
        float | None,
        typer.Option(
            help="Only hits at least this confident (0-1, see the match column); none: 'no close match'."
        ),
    ] = None,
    min_score: Annotated[
        float | None, typer.Option(help="Only hits with at least this cosine score.")
    ] = None,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--where",
            "-w",
            help="Attribute filter, repeatable (all must hold): category=shoes, brand in a,b, price<50.",
        ),
    ] = None,
    collapse: Annotated[
        bool, typer.Option("--collapse/--no-collapse", help="Show near-duplicates of one product once.")
    ] = False,
    query_expansion: Annotated[
        int | None,
        typer.Option(help="Query expansion neighbours (default: the model's, 0 unless trained with it)."),
    ] = None,
    rerank: Annotated[
        str | None,
        typer.Option(
            metavar="none|k-reciprocal",
            help="Re-order the top 100 over the catalogue's neighbour graph (k-reciprocal, the first hit "
            "kept; default: on when the model has the graph, as models trained by default do; "
            "none: off; docs/quality.md).",
        ),
    ] = None,
    as_json: AsJson = False,
    plain: Plain = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """The catalogue images most similar to QUERY, ranked by similarity (cosine; --query-expansion 2
    expands the query with its two best matches, --views auto adds crops for a shop photo against a
    studio catalogue: both opt-in, docs/quality.md).

    Each hit says how close it is ("very similar", "similar", "loosely related": its confidence, 0-1,
    compared with how close catalogue images are to each other); when none is close the command
    says "no close match" (on stderr).

    Piped, or with --plain: tab-separated rank, score, cluster, image (the full id), path, confidence
    and match.
    """
    from . import Searcher, SearchOptions
    from ._pipeline import Query, run_search

    s = _call(
        Searcher, model, csv, image_root=images, extractor=extractor, features_folder=features,
        query_expansion=query_expansion,
    )  # fmt: skip
    options = SearchOptions(
        top_n=n, nprobe=nprobe, exact=exact, views=views, colour_weight=_colour_weight(colour, match_colour),
        where=where or None, collapse=collapse, min_score=min_score, min_confidence=min_confidence,
        rerank=rerank,
    )  # fmt: skip
    result = _call(run_search, s, Query(image=query), options)  # the one pipeline, as every entry point
    log.info("%s; query searched as %d view(s)", result.scan, result.views)
    hits = result.hits
    if as_json:
        _echo_json([_hit_dict(h) for h in hits])
    elif plain or not _stdout_is_terminal():
        rows = [_hit_dict(h) for h in hits]
        _echo_tsv(
            ["rank", "score", "cluster", "image", "path", "confidence", "match"],
            [
                [r["rank"], f"{r['score']:.4f}", r["cluster"], r["image"], r.get("path") or "",
                 "" if r.get("confidence") is None else f"{r['confidence']:.3f}", r.get("match") or ""]
                for r in rows
            ],
        )  # fmt: skip
    else:
        render_hits(hits, f"{len(hits)} most similar to {query}")
    none_close = not hits or all(getattr(h, "close", None) is False for h in hits)
    filtered = min_confidence is not None or min_score is not None
    if not as_json and none_close and (hits or filtered):
        why = ": the hits are only loosely related" if hits else ""
        typer.echo(f"no close match in the catalogue{why}", err=True)


@_command()
def duplicates(
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder.")],
    threshold: Annotated[
        float | None,
        typer.Option(
            help="Cosine similarity from which two images are duplicates (default 0.93, measured on "
            "planted copies; 0.88 also joins colour variants and similar products)."
        ),
    ] = None,
    method: Annotated[str, typer.Option(help="auto (exact up to 50,000 images), exact or ivf.")] = "auto",
    as_json: AsJson = False,
    plain: Plain = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Groups of near-duplicate images: re-uploads, re-encoded, resized, slightly cropped or mirrored copies.

    Piped, or with --plain: tab-separated group, size, max_score, min_score, image (one row per image).
    """
    from . import find_duplicates

    kw: dict[str, Any] = {} if threshold is None else {"threshold": threshold}
    rep = _call(find_duplicates, features_dir, method=method, show_progress=_bars(), **kw)
    if as_json:
        _echo_json(rep.to_dict())
        return
    rows = [
        [g_i, g.size, f"{g.max_score:.4f}", f"{g.min_score:.4f}", image]
        for g_i, g in enumerate(rep.groups, 1)
        for image in g.ids
    ]
    if plain or not _stdout_is_terminal():  # machine-readable: the rows only
        _echo_tsv(["group", "size", "max_score", "min_score", "image"], rows)
        return
    for g_i, g in enumerate(rep.groups, 1):
        typer.echo(f"group {g_i}: {g.size} images, similarity {g.min_score:.3f}-{g.max_score:.3f}")
        for image in g.ids:
            typer.echo(f"  {_printable(image)}")
    _say(
        f"{len(rep.pairs)} pairs in {len(rep.groups)} groups ({rep.n_duplicate_images} of {rep.n_images} "
        f"images) at cosine >= {rep.threshold:.2f}"
    )


@_command()
def report(
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder the model was trained on.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file.")] = Path("model.vsm"),
    csv: Annotated[
        Path | None, typer.Option("--csv", "-c", help="Assignments CSV (checked against the model).")
    ] = None,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Report folder (new, empty, or an earlier report).")
    ] = Path("report"),
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="The catalogue's image folder, for thumbnails (the folder recorded at extraction is "
            "never read unless named here).",
        ),
    ] = None,
    thumb_size: Annotated[int, typer.Option(help="Thumbnail side in pixels.")] = 160,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """A static HTML report of the catalogue: clusters, outliers, near-duplicates, a map, CSV exports.

    Opens offline in any browser (OUT/index.html); thumbnails are reused when it is rebuilt.
    """
    from . import make_report

    s = _call(
        make_report,
        features_dir,
        model,
        csv,
        out,
        image_root=images,
        thumb_size=thumb_size,
        show_progress=_bars(),
    )
    _say(
        f"report of {s.n_images} images (k={s.k}, {s.n_duplicate_groups} duplicate groups) written to "
        f"{out / 'index.html'} in {s.seconds:.1f} s ({s.bytes / 2**20:.1f} MiB, {s.thumbnails_made} "
        f"thumbnails made, {s.thumbnails_reused} reused)"
    )
    if images is None:
        _warn("no --images: the report has no thumbnails (the folder recorded at extraction is not read)")


@_command("choose-k")
def choose_k(
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder.")],
    max_clusters: Annotated[int, typer.Option(help="Largest k tried (k = 2..max).")] = 30,
    n_components: Annotated[int | None, typer.Option(help="PCA dimensions for the analysis.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the elbow + silhouette plot (PNG).")] = None,
    scores: Annotated[Path | None, typer.Option(help="Write the scores (.csv or .json).")] = None,
    method: Annotated[str, typer.Option(help="fast, or exhaustive (slow reference sweep).")] = "fast",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    as_json: AsJson = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Elbow, silhouette and retrieval scores for k = 2..MAX; prints the recommended k."""
    from . import get_optimal_num_clusters

    sel = _call(
        get_optimal_num_clusters,
        features_dir,
        max_clusters,
        n_components,
        plot_path=plot,
        scores_path=scores,
        method=method,
        random_state=seed,
        show_progress=_bars(),
        verbose=False,  # the CLI prints its own table and lines (stdout stays JSON with --json)
    )
    if as_json:
        _echo_json(sel.to_dict())
    else:
        top = getattr(getattr(sel, "retrieval", None), "top", 10)
        typer.echo(k_table(sel.to_rows(), sel.recommended_k, top))
        typer.echo(_wrap(f"recommended k = {sel.recommended_k}: {sel.rule}"))
    if plot is not None:
        _say(f"plot written to {plot}")
    if scores is not None:
        _say(f"scores written beside {scores} (.csv and .json)")


@_command()
def serve(
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file.")] = Path("model.vsm"),
    csv: Annotated[Path | None, typer.Option("--csv", "-c", help="Assignments CSV.")] = None,
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    image_root: Annotated[
        Path | None,
        typer.Option("--images", "--image-root", help="Catalogue image folder to serve images from."),
    ] = None,
    allow_root: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="<dir>", help="Without --images: serve the recorded folder if inside this (repeatable)."
        ),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, MB.")] = 20.0,
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most uploads embedded together (1: no batching).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="Wait for more uploads to batch, ms.")] = 5.0,
    queue_limit: Annotated[int, typer.Option(help="Uploads held per stage before answering 503.")] = 32,
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks for a new model file (0: off).")
    ] = 2.0,
    extractor: Annotated[
        str | None,
        typer.Option(help="Query extractor, checked against the model (needed for an onnx:PATH model)."),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option("--features", help="Feature store of a model without its index (default: beside it)."),
    ] = None,
    report: Annotated[
        Path | None,
        typer.Option("--report", help="A `varsitysrch report` folder, served at /report/ (Catalogue view)."),
    ] = None,
    admin_token: Annotated[
        str | None,
        typer.Option(
            "--admin-token",
            envvar="VARSITYSRCH_ADMIN_TOKEN",
            show_envvar=True,
            help="Enable POST /admin/reload for requests with 'Authorization: Bearer <this>' (16+ "
            "characters; prefer the environment variable: a command line is visible to other users).",
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Serve search over HTTP (JSON API, web page at /, OpenAPI at /docs)."""
    from ._errors import InvalidArgumentError

    if not 1 <= port <= 65535:  # before the model loads: one line, never an OverflowError from bind
        raise InvalidArgumentError(f"port must be an integer in [1, 65535]; got {port}")
    named = {
        "--model": model,
        "--csv": csv,
        "--images": image_root,
        "--features": features,
        "--report": report,
    }
    for name, path in named.items():
        want_file = name in ("--model", "--csv")
        if path is not None and not (path.is_file() if want_file else path.is_dir()):
            raise InvalidArgumentError(
                f"{name} must be an existing {'file' if want_file else 'folder'}; got {str(path)!r}"
            )
    from .service import run_server

    # uvicorn prints where it listens once the model is loaded
    run_server(
        model,
        csv,
        host=host,
        port=port,
        image_root=image_root,
        allow_roots=tuple(allow_root or ()),
        max_upload_bytes=int(max_upload_mb * 2**20),
        threads=threads,
        max_batch=max_batch,
        batch_window_ms=batch_window_ms,
        queue_limit=queue_limit,
        reload_interval=reload_interval,
        extractor=extractor,
        features_folder=features,
        report_dir=report,
        admin_token=admin_token,
    )


@_command()
def update(
    img_dir: Annotated[Path, typer.Argument(help="Folder of catalogue images, as it is now.")],
    features_dir: Annotated[Path, typer.Argument(help="The catalogue's feature store.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file to update.")] = Path("model.vsm"),
    csv: Annotated[
        Path | None,
        typer.Option("--csv", "-c", help="Assignments CSV to rewrite (default: the model's name, .csv)."),
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Replace a CSV that is not the model's own.")
    ] = False,
    engine: Annotated[str, typer.Option(help="local, or dask (needs --scheduler).")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="dask.distributed scheduler address.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    extractor: Annotated[
        str | None,
        typer.Option(help="Extractor for new images, checked against the model (needed for onnx:PATH)."),
    ] = None,
    allow_empty: Annotated[
        bool,
        typer.Option(
            "--allow-empty",
            help="Let a folder with no readable image empty the store (refused otherwise; the model stays).",
        ),
    ] = False,
    attributes: Annotated[
        Path | None,
        typer.Option(
            "--attributes", help="A new attributes CSV (default: keep the model's, new images get none)."
        ),
    ] = None,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Embed new/changed images, drop deleted ones, assign them to clusters: no retraining.

    The CSV defaults to the model's name (-m shop.vsm -> shop.csv); a CSV that is not the model's own
    is never replaced without --force.
    """
    from . import update_catalogue

    csv = _check_train_outputs(model, csv, force, unrecorded_ok=True)
    rep = _call(
        update_catalogue,
        img_dir,
        features_dir,
        model,
        csv,
        engine=engine,
        scheduler=scheduler,
        extractor=extractor,
        allow_empty=allow_empty,
        attributes=attributes,
        show_progress=_bars(),
    )
    if as_json:
        _echo_json(rep.to_dict())
    else:
        _say(rep.summary())


@_command("eval")
def eval_(
    img_dir: Annotated[
        Path, typer.Argument(help="Labelled catalogue: one subfolder per label, or see --labels.")
    ],
    labels: Annotated[
        Path | None, typer.Option(help="CSV image,label[,group] instead of folder names.")
    ] = None,
    config: Annotated[
        list[str] | None,
        typer.Option(
            "--config", help="EXTRACTOR[:opt=val,...][+post...]; repeat to compare (default: a set)."
        ),
    ] = None,
    k: Annotated[list[int] | None, typer.Option("-k", help="Cluster counts to compare (repeatable).")] = None,
    nprobe: Annotated[
        list[int] | None, typer.Option(help="nprobe values (repeatable; default 1 2 4 + calibrated).")
    ] = None,
    queries: Annotated[
        int | None, typer.Option(help="Leave-one-out queries sampled (default 2000; 0 = all).")
    ] = 2000,
    split: Annotated[
        str | None,
        typer.Option(help="Query split: a fraction like 0.1, or a file of query ids (default: LOO)."),
    ] = None,
    top_k: Annotated[int, typer.Option(help="Cut-off k of P@k, mAP@k, recall@k.")] = 10,
    out: Annotated[Path, typer.Option(help="Folder for stores, eval.json, eval.md and eval.html.")] = Path(
        "eval"
    ),
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    queries_dir: Annotated[
        Path | None,
        typer.Option(help="A separate labelled query set (shoppers' photos); labels = sub-folders."),
    ] = None,
    queries_csv: Annotated[
        Path | None,
        typer.Option(help="CSV image,label of the query set (paths relative to --queries-dir or IMG_DIR)."),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", "-m", help="Your model: its k is measured (default: model.vsm here, if any; else 20)."
        ),
    ] = None,
    details: Annotated[
        bool, typer.Option("--details", help="Print the full table (every configuration, k and nprobe).")
    ] = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Measure search quality on a labelled catalogue: a short summary of your search (mAP@10,
    recall@1, what they mean, the one setting worth changing); --details prints the full table."""
    from . import evaluate
    from ._evaluate import DEFAULT_CONFIGS

    if not k:
        from ._modelfile import load_model

        mine = model if model is not None else (Path("model.vsm") if Path("model.vsm").is_file() else None)
        k = [int(load_model(mine).k)] if mine is not None else [20]

    query_split: Any = None
    if split is not None:
        try:
            query_split = float(split)
        except ValueError:
            query_split = split
    rep = _call(
        evaluate,
        img_dir,
        labels=labels,
        configs=config or DEFAULT_CONFIGS,
        k_values=tuple(k or (20,)),
        nprobes=(*nprobe, None) if nprobe else (1, 2, 4, None),
        query_split=query_split,
        top_k=top_k,
        n_queries=None if queries == 0 else queries,
        out_dir=out,
        random_state=seed,
        show_progress=_bars(),
        queries_dir=queries_dir,
        queries_csv=queries_csv,
    )
    text = rep.to_markdown() if details else rep.summary()
    typer.echo(_printable(text, keep_newlines=True))  # labels are folder names
    _say(f"written to {out}/ (eval.md: the full table{'' if details else '; --details prints it'})")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
