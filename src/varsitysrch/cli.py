"""The ``varsitysrch`` command line (typer).

Heavy modules (numpy, onnxruntime, scikit-learn, faiss) are imported inside the
commands, so ``varsitysrch --help`` is instant.  Bad input exits with code 2 and a
one-line message; ``-v`` shows the library's log.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

app = typer.Typer(
    name="varsitysrch",
    help="Product image search: embed a catalogue, cluster it, search it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Verbose = Annotated[int, typer.Option("--verbose", "-v", count=True, help="More log output (-v, -vv).")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]


def _setup(verbose: int) -> None:
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def _fail(exc: BaseException) -> NoReturn:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _run(fn: Any, *args: Any, **kwargs: Any) -> Any:
    from ._errors import VarsitysrchError

    try:
        return fn(*args, **kwargs)
    except (VarsitysrchError, FileNotFoundError, NotADirectoryError, PermissionError) as exc:
        _fail(exc)


@app.command()
def extract(
    img_dir: Annotated[Path, typer.Argument(help="Folder of catalogue images (searched recursively).")],
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder to write (or update).")],
    extractor: Annotated[
        str, typer.Option(help="efficientnet-lite0, mobilenet-v2, vgg16-block5pool or onnx:PATH.")
    ] = "efficientnet-lite0",
    batch_size: Annotated[int, typer.Option(help="Images per inference batch.")] = 8,
    workers: Annotated[int | None, typer.Option(help="Decoding threads (default: CPUs).")] = None,
    threads: Annotated[int | None, typer.Option(help="Inference threads (default: CPUs).")] = None,
    float16: Annotated[
        bool, typer.Option("--float16", help="Store vectors as float16 (half the size).")
    ] = False,
    weights: Annotated[Path | None, typer.Option(help="Weights file (vgg16-block5pool).")] = None,
    engine: Annotated[str, typer.Option(help="local, or dask (needs --scheduler).")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="dask.distributed scheduler address.")] = None,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Embed every image of IMG_DIR into the feature store FEATURES_DIR (reruns only embed changes)."""
    _setup(verbose)
    from ._extract import extract_features

    kw: dict[str, Any] = {}
    if weights is not None:
        kw["weights"] = str(weights)
    if engine != "local" or scheduler is not None:
        kw["engine"], kw["scheduler"] = engine, scheduler
    res = _run(
        extract_features,
        img_dir,
        features_dir,
        extractor=extractor,
        batch_size=batch_size,
        num_workers=workers,
        threads=threads,
        dtype="float16" if float16 else "float32",
        show_progress=not quiet,
        **kw,
    )
    typer.echo(res.summary())
    if res.n_skipped:
        typer.echo(f"{res.n_skipped} unreadable files skipped: see {Path(features_dir) / 'skipped.csv'}")


@app.command()
def train(
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file to write.")] = Path("model.vsm"),
    csv: Annotated[Path, typer.Option("--csv", "-c", help="Assignments CSV to write.")] = Path(
        "clusters.csv"
    ),
    k: Annotated[int, typer.Option("--num-clusters", "-k", help="Number of clusters.")] = 20,
    n_components: Annotated[int | None, typer.Option(help="Cluster in a PCA space of this size.")] = None,
    n_init: Annotated[int, typer.Option(help="K-means restarts.")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    backend: Annotated[str, typer.Option(help="auto, sklearn or faiss.")] = "auto",
    engine: Annotated[str, typer.Option(help="local, or dask: assign clusters on a Dask cluster.")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="dask.distributed scheduler address.")] = None,
    verbose: Verbose = 0,
) -> None:
    """Train K-means on FEATURES_DIR; write the model file and the image-to-cluster CSV."""
    _setup(verbose)
    from ._cluster import train_clusters

    m = _run(
        train_clusters,
        features_dir,
        model,
        csv,
        k,
        n_components=n_components,
        n_init=n_init,
        random_state=seed,
        backend=backend,
        engine=engine,
        scheduler=scheduler,
    )
    import numpy as np

    sizes = sorted(int(s) for s in np.bincount(m.labels_, minlength=k))
    typer.echo(
        f"k={k} on {len(m.labels_)} images ({m.backend_}, {m.fit_seconds_:.1f}s); cluster sizes "
        f"{sizes[0]}..{sizes[-1]}; wrote {model} and {csv}"
    )


@app.command()
def search(
    query: Annotated[Path, typer.Argument(help="Query image.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file.")] = Path("model.vsm"),
    csv: Annotated[
        Path | None, typer.Option("--csv", "-c", help="Assignments CSV (checked against the model).")
    ] = None,
    n: Annotated[int, typer.Option("--top-n", "-n", help="Number of results.")] = 5,
    nprobe: Annotated[int | None, typer.Option(help="Clusters to scan (default: calibrated).")] = None,
    exact: Annotated[bool, typer.Option("--exact", help="Scan the whole catalogue.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    verbose: Verbose = 0,
) -> None:
    """The catalogue images most similar to QUERY, ranked by cosine similarity."""
    _setup(verbose)
    from ._search import Searcher

    s = _run(Searcher, model, csv)
    hits = _run(s.search, query, n, nprobe=nprobe, exact=exact)
    if as_json:
        typer.echo(json.dumps([h.to_dict() for h in hits], indent=2, ensure_ascii=False))
        return
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{len(hits)} most similar to {query}")
    for col in ("rank", "score", "cluster", "image"):
        t.add_column(col, justify="right" if col != "image" else "left")
    for h in hits:
        t.add_row(str(h.rank), f"{h.score:.4f}", str(h.cluster), h.image)
    Console().print(t)


@app.command("choose-k")
def choose_k(
    features_dir: Annotated[Path, typer.Argument(help="Feature store folder.")],
    max_clusters: Annotated[int, typer.Option(help="Largest k tried (k = 2..max).")] = 30,
    n_components: Annotated[int | None, typer.Option(help="PCA dimensions for the analysis.")] = None,
    plot: Annotated[Path | None, typer.Option(help="Write the elbow + silhouette plot (PNG).")] = None,
    scores: Annotated[Path | None, typer.Option(help="Write the scores (.csv or .json).")] = None,
    method: Annotated[str, typer.Option(help="fast, or exhaustive (slow reference sweep).")] = "fast",
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Elbow, silhouette and retrieval scores for k = 2..MAX; prints the recommended k."""
    _setup(verbose)
    from ._selectk import get_optimal_num_clusters

    sel = _run(
        get_optimal_num_clusters,
        features_dir,
        max_clusters,
        n_components,
        plot_path=plot,
        scores_path=scores,
        method=method,
        random_state=seed,
        show_progress=not quiet,
    )
    typer.echo(sel.summary())
    if plot is not None:
        typer.echo(f"plot written to {plot}")


@app.command()
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
        typer.Option(help="Without --images: serve the recorded image folder if inside this (repeatable)."),
    ] = None,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload, MB.")] = 20.0,
    threads: Annotated[int | None, typer.Option(help="Inference threads.")] = None,
    max_batch: Annotated[int, typer.Option(help="Most uploads embedded together (1: no batching).")] = 8,
    batch_window_ms: Annotated[float, typer.Option(help="Wait for more uploads to batch, ms.")] = 5.0,
    queue_limit: Annotated[int, typer.Option(help="Uploads held per stage before answering 503.")] = 32,
    reload_interval: Annotated[
        float, typer.Option(help="Seconds between checks for a new model file (0: off).")
    ] = 2.0,
    verbose: Verbose = 0,
) -> None:
    """Serve search over HTTP (JSON API, web page at /, OpenAPI at /docs)."""
    _setup(verbose)
    from .service import run_server

    _run(
        run_server,
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
    )


@app.command()
def update(
    img_dir: Annotated[Path, typer.Argument(help="Folder of catalogue images, as it is now.")],
    features_dir: Annotated[Path, typer.Argument(help="The catalogue's feature store.")],
    model: Annotated[Path, typer.Option("--model", "-m", help="Model file to update.")] = Path("model.vsm"),
    csv: Annotated[Path, typer.Option("--csv", "-c", help="Assignments CSV to rewrite.")] = Path(
        "clusters.csv"
    ),
    engine: Annotated[str, typer.Option(help="local, or dask (needs --scheduler).")] = "local",
    scheduler: Annotated[str | None, typer.Option(help="dask.distributed scheduler address.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Embed new/changed images, drop deleted ones, assign them to clusters: no retraining."""
    _setup(verbose)
    from ._update import update_catalogue

    rep = _run(
        update_catalogue,
        img_dir,
        features_dir,
        model,
        csv,
        engine=engine,
        scheduler=scheduler,
        show_progress=not quiet,
    )
    typer.echo(json.dumps(rep.to_dict(), indent=2) if as_json else rep.summary())


@app.command("eval")
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
    quiet: Quiet = False,
    verbose: Verbose = 0,
) -> None:
    """Measure search quality on a labelled catalogue: exact, the seed's method and ranked search."""
    _setup(verbose)
    from ._evaluate import DEFAULT_CONFIGS, evaluate

    query_split: Any = None
    if split is not None:
        try:
            query_split = float(split)
        except ValueError:
            query_split = split
    rep = _run(
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
        show_progress=not quiet,
    )
    typer.echo(rep.to_markdown())
    typer.echo(f"written to {out}/")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
