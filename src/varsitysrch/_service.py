"""HTTP service and web page: search a catalogue from a browser or an app.

:func:`create_app` loads a model (and its extractor) once and returns a FastAPI app;
:func:`run_server` serves it with uvicorn.  Both need the optional extra ``serve``
(``pip install 'varsitysrch[serve]'``).

Endpoints (OpenAPI at ``/docs`` and ``/openapi.json``)::

    GET  /                       the web page (plain HTML/JS/CSS, works offline)
    POST /search                 multipart: ``image`` (a file) or ``image_id``; ``top_n``, ``nprobe``,
                                 ``exact``, ``include_self`` as form fields or query parameters
    GET  /search?image_id=ID     search with a catalogue image
    GET  /images/{id}            a catalogue image (only catalogue ids, only inside the image folder)
    GET  /thumbnails/{id}        a JPEG thumbnail, cached on disk
    GET  /clusters               every cluster: size and a few sample members
    GET  /clusters/{id}          a cluster's members, paged (``offset``, ``limit``)
    GET  /healthz                liveness and catalogue facts
    GET  /metrics                Prometheus text format

Errors are JSON ``{"detail": ...}``: 404 unknown image / cluster, 413 upload too large,
415 not an image, 422 invalid parameters or an image that cannot be used (decompression
bombs included).

Concurrency: FastAPI runs the (sync) search endpoints in a thread pool.  Decoding runs in
parallel (bounded by a semaphore, to bound memory); the ONNX Runtime call runs under a
lock, since the session already uses every core for one image and concurrent runs would
only oversubscribe them.  The index search itself only reads numpy arrays.
"""

import hashlib
import io
import json
import logging
import math
import mimetypes
import os
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import numpy as np

from ._errors import ImageError, InvalidArgumentError, VarsitysrchError, missing
from ._version import __version__

log = logging.getLogger(__name__)

__all__ = ["create_app", "run_server"]

DEFAULT_MAX_UPLOAD = 20 * 2**20
#: Room for the multipart envelope (boundaries, part headers, small form fields) on top of the file.
MULTIPART_SLACK = 64 * 1024
MAX_TOP_N = 1000
MAX_PAGE = 500
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
}
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_APP_KEYS = ("image_root", "max_upload_bytes", "thumb_size", "cache_dir", "nprobe", "threads")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# ---------------------------------------------------------------------------- metrics
def _esc(v: str) -> str:
    return v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(names: tuple[str, ...], values: tuple[str, ...], extra: str = "") -> str:
    parts = [f'{n}="{_esc(v)}"' for n, v in zip(names, values, strict=True)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(x: float) -> str:
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if float(x).is_integer() and abs(x) < 2**53:
        return str(int(x))
    return repr(float(x))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0

    def observe(self, x: float) -> None:
        for i, b in enumerate(self.buckets):
            if x <= b:
                self.counts[i] += 1
        self.sum += x
        self.count += 1


class Metrics:
    """Counters and histograms, rendered in the Prometheus text exposition format (0.0.4)."""

    REQ_LABELS = ("method", "route", "status")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests: dict[tuple[str, ...], int] = {}
        self.errors: dict[tuple[str, ...], int] = {}
        self.latency: dict[tuple[str, ...], _Histogram] = {}
        self.embed = _Histogram(LATENCY_BUCKETS)
        self.thumbs: dict[tuple[str, ...], int] = {}
        self.in_flight = 0
        self.started = time.time()

    def begin(self) -> None:
        with self._lock:
            self.in_flight += 1

    def end(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        with self._lock:
            self.in_flight -= 1
            self.requests[key] = self.requests.get(key, 0) + 1
            if status >= 400:
                self.errors[key] = self.errors.get(key, 0) + 1
            h = self.latency.get(key)
            if h is None:
                h = self.latency[key] = _Histogram(LATENCY_BUCKETS)
            h.observe(seconds)

    def observe_embed(self, seconds: float) -> None:
        with self._lock:
            self.embed.observe(seconds)

    def thumbnail(self, result: str) -> None:
        with self._lock:
            self.thumbs[(result,)] = self.thumbs.get((result,), 0) + 1

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        out: list[str] = []

        def counter(name: str, help_: str, names: tuple[str, ...], data: dict[tuple[str, ...], int]) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} counter")
            for k in sorted(data):
                out.append(f"{name}{_labels(names, k)} {data[k]}")

        def histogram(
            name: str, help_: str, names: tuple[str, ...], data: dict[tuple[str, ...], _Histogram]
        ) -> None:
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} histogram")
            for k in sorted(data):
                h = data[k]
                for b, c in zip(h.buckets, h.counts, strict=True):
                    le = 'le="' + _num(b) + '"'
                    out.append(f"{name}_bucket{_labels(names, k, le)} {c}")
                inf = 'le="+Inf"'
                out.append(f"{name}_bucket{_labels(names, k, inf)} {h.count}")
                out.append(f"{name}_sum{_labels(names, k)} {_num(h.sum)}")
                out.append(f"{name}_count{_labels(names, k)} {h.count}")

        with self._lock:
            counter(
                "varsitysrch_http_requests_total",
                "HTTP requests by method, route template and status.",
                self.REQ_LABELS,
                self.requests,
            )
            counter(
                "varsitysrch_http_errors_total",
                "HTTP responses with status >= 400.",
                self.REQ_LABELS,
                self.errors,
            )
            histogram(
                "varsitysrch_http_request_duration_seconds",
                "HTTP request latency in seconds, by method, route template and status.",
                self.REQ_LABELS,
                self.latency,
            )
            histogram(
                "varsitysrch_embed_duration_seconds",
                "Time to embed one query image (waiting for the model included).",
                (),
                {(): self.embed},
            )
            counter(
                "varsitysrch_thumbnails_total",
                "Thumbnails served from the disk cache (hit) or made (miss).",
                ("result",),
                self.thumbs,
            )
            g = {
                "varsitysrch_http_requests_in_flight": ("HTTP requests being served.", float(self.in_flight)),
                "varsitysrch_start_time_seconds": ("Start time of the service (Unix time).", self.started),
                **gauges,
            }
        for name, (help_, value) in g.items():
            out.append(f"# HELP {name} {help_}")
            out.append(f"# TYPE {name} gauge")
            out.append(f"{name} {_num(value)}")
        return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------- ASGI middleware
async def _send_json(send: Send, status: int, obj: Any, close: bool = False) -> None:
    body = json.dumps(obj).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass


class _BodyLimit:
    """413 for request bodies over ``limit`` bytes: by Content-Length, or counted while streaming."""

    def __init__(self, app: ASGIApp, limit: int, detail: str, routes: Any = ()) -> None:
        self.app = app
        self.limit = limit
        self.detail = detail
        self.routes = routes  # to label an early 413 with its route in the metrics

    def _label_route(self, scope: Scope) -> None:
        for r in self.routes:
            try:
                match, _ = r.matches(scope)
            except Exception:  # pragma: no cover - a route that cannot match this scope
                continue
            if match.name == "FULL":
                scope["route"] = r
                return

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for k, v in scope.get("headers", ()):
            if k == b"content-length":
                try:
                    n = int(v)
                except ValueError:
                    n = -1
                if n > self.limit:
                    self._label_route(scope)
                    await _send_json(send, 413, {"detail": self.detail}, close=True)
                    return
        received = 0
        too_large = False
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            msg = await receive()
            if msg["type"] == "http.request":
                received += len(msg.get("body", b""))
                if received > self.limit:
                    too_large = True
                    raise _TooLarge(self.detail)
            return msg

        async def guarded_send(msg: Message) -> None:
            nonlocal started
            if too_large and not started:
                return  # the app's reaction to _TooLarge (a 400, a 500) is replaced by the 413 below
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large or started:
                raise
        if too_large and not started:
            await _send_json(send, 413, {"detail": self.detail}, close=True)


class _Observe:
    """Request metrics (route template, status, latency) and a few security headers."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500
        self.metrics.begin()

        async def observed_send(msg: Message) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = int(msg["status"])
                headers = list(msg.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"x-content-type-options" not in names:
                    headers.append((b"x-content-type-options", b"nosniff"))
                if b"referrer-policy" not in names:
                    headers.append((b"referrer-policy", b"no-referrer"))
                msg = {**msg, "headers": headers}
            await send(msg)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = getattr(scope.get("route"), "path", None) or "<unmatched>"
            method = scope.get("method", "")
            method = method if method in _METHODS else "other"  # bounded label values
            self.metrics.end(method, route, status, time.perf_counter() - t0)


# ---------------------------------------------------------------------------- the app
def _import_fastapi() -> Any:
    try:
        import fastapi
    except ImportError as exc:
        raise missing("fastapi", "serve", "the HTTP service") from exc
    try:
        import python_multipart  # noqa: F401
    except ImportError:
        try:
            import multipart  # type: ignore[import-not-found,unused-ignore]  # noqa: F401
        except ImportError as exc:
            raise missing("python-multipart", "serve", "the HTTP service") from exc
    return fastapi


def _static_files() -> dict[str, bytes]:
    base = resources.files("varsitysrch").joinpath("static")
    return {name: base.joinpath(name).read_bytes() for name in _STATIC}


def create_app(
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None = None,
    *,
    image_root: str | os.PathLike[str] | None = None,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    thumb_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    nprobe: int | None = None,
    threads: int | None = None,
) -> Any:
    """A FastAPI app serving search over one model; the model and extractor load now, once.

    Args:
        model_filename: a model file written by :func:`~varsitysrch.train_clusters`.
        csv_file: its assignments CSV (optional; checked against the model).
        image_root: folder of the catalogue images (default: recorded at extraction).
        max_upload_bytes: largest accepted upload (413 beyond).
        thumb_size: longest side of thumbnails, in pixels.
        cache_dir: thumbnail cache (default: ``<user cache>/varsitysrch/thumbnails``).
        nprobe: default clusters to scan (``None``: the model's calibrated value).
        threads: ONNX Runtime threads (default: every core).
    """
    _import_fastapi()
    from fastapi import FastAPI, File, Form, HTTPException, Query, Request, UploadFile
    from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse, Response
    from PIL import Image, ImageOps, UnidentifiedImageError

    from ._extractors import cache_dir as user_cache_dir
    from ._images import _to_rgb, load_image, open_image
    from ._io import atomic_path
    from ._search import Hit, Searcher

    if isinstance(max_upload_bytes, bool) or not isinstance(max_upload_bytes, int) or max_upload_bytes < 1:
        raise InvalidArgumentError(f"max_upload_bytes must be a positive integer; got {max_upload_bytes!r}")
    if isinstance(thumb_size, bool) or not isinstance(thumb_size, int) or not 16 <= thumb_size <= 2048:
        raise InvalidArgumentError(f"thumb_size must be an integer in [16, 2048]; got {thumb_size!r}")

    searcher = Searcher(model_filename, csv_file, nprobe=nprobe, threads=threads, image_root=image_root)
    embedder = searcher.embedder if searcher.extractor is not None else None  # load the model now
    if embedder is not None:  # warm up: the first run of an ONNX session is slow
        size = embedder.extractor.input_size
        embedder.embed(np.full((1, size, size, 3), 255, np.uint8))
    root = searcher.image_root.resolve() if searcher.image_root is not None else None
    ids: list[str] = list(searcher.ids)
    id_set = frozenset(ids)
    thumbs_dir = Path(cache_dir) if cache_dir is not None else user_cache_dir() / "thumbnails"
    static = _static_files()
    metrics = Metrics()
    embed_lock = threading.Lock()
    decode_slots = threading.BoundedSemaphore(max(2, min(8, os.cpu_count() or 1)))
    mb = max_upload_bytes / 2**20
    too_large = f"upload too large: the limit is {max_upload_bytes} bytes ({mb:.3g} MiB)"

    app = FastAPI(
        title="varsitysrch",
        version=__version__,
        description="Product image search: upload a photo (or pick a catalogue image), get similar products.",
    )
    app.state.searcher = searcher
    app.state.metrics = metrics
    app.add_middleware(
        _BodyLimit, limit=max_upload_bytes + MULTIPART_SLACK, detail=too_large, routes=app.router.routes
    )
    app.add_middleware(_Observe, metrics=metrics)

    # -------------------------------------------------------------- helpers
    def base(request: Any) -> str:
        return str(request.scope.get("root_path", "")).rstrip("/")

    def links(request: Any, image_id: str) -> dict[str, str]:
        q = quote(image_id, safe="/")
        b = base(request)
        return {"url": f"{b}/images/{q}", "thumbnail_url": f"{b}/thumbnails/{q}"}

    def hit_dict(request: Any, h: Hit) -> dict[str, Any]:
        return {
            "image": h.image,
            "score": h.score,
            "cluster": h.cluster,
            "rank": h.rank,
            **links(request, h.image),
        }

    def member_dict(request: Any, row: int) -> dict[str, Any]:
        image_id = ids[row]
        return {"image": image_id, **links(request, image_id)}

    def pick(form_value: Any, query_value: Any, default: Any) -> Any:
        if form_value is not None:
            return form_value
        return default if query_value is None else query_value

    def check_id(image_id: str) -> None:
        if image_id not in id_set:
            raise HTTPException(404, f"image_id {image_id!r} is not in the catalogue")

    def source_path(image_id: str) -> Path:
        check_id(image_id)
        if root is None:
            raise HTTPException(404, "the catalogue's image folder is unknown: serve with image_root")
        try:
            p = (root / image_id).resolve()
        except (OSError, RuntimeError) as exc:  # RuntimeError: a symlink loop
            raise HTTPException(404, f"image {image_id!r} is not available") from exc
        if not p.is_relative_to(root) or not p.is_file():
            raise HTTPException(404, f"image {image_id!r} is not available")
        return p

    def run_search(
        request: Any,
        query: dict[str, Any],
        fn: Callable[[], list[Hit]],
        t0: float,
        top_n: int,
        nprobe: int | None,
        exact: bool,
    ) -> dict[str, Any]:
        hits = fn()
        return {
            "query": query,
            "top_n": top_n,
            "nprobe": None if exact else (searcher.default_nprobe if nprobe is None else nprobe),
            "exact": exact,
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
            "hits": [hit_dict(request, h) for h in hits],
        }

    def search_by_id(
        request: Any, image_id: str, top_n: int, nprobe: int | None, exact: bool, include_self: bool
    ) -> dict[str, Any]:
        t0 = time.perf_counter()
        check_id(image_id)
        query = {"kind": "image_id", "image_id": image_id, **links(request, image_id)}
        return run_search(
            request,
            query,
            lambda: searcher.search_id(
                image_id, top_n, nprobe=nprobe, exact=exact, include_self=include_self
            ),
            t0,
            top_n,
            nprobe,
            exact,
        )

    def embed_upload(data: bytes, filename: str | None) -> np.ndarray:
        if embedder is None:
            raise HTTPException(
                501, "this model's features were not made by a known extractor: search by image_id instead"
            )
        ex = embedder.extractor
        name = f" {filename!r}" if filename else ""
        try:
            with decode_slots:
                arr = load_image(data, ex.input_size, ex.resize)
        except ImageError as exc:
            if isinstance(exc.__cause__, UnidentifiedImageError):
                raise HTTPException(
                    415,
                    f"the upload{name} is not an image in a supported format "
                    "(JPEG, PNG, WebP, GIF, BMP or TIFF)",
                ) from exc
            raise HTTPException(422, f"cannot use the uploaded image{name}: {exc}") from exc
        t0 = time.perf_counter()
        with embed_lock:
            v = embedder.embed(arr[None])[0]
        metrics.observe_embed(time.perf_counter() - t0)
        return v

    def make_thumbnail(src: Path) -> bytes:
        with decode_slots:
            im = open_image(src)
            if getattr(im, "n_frames", 1) > 1:
                im.seek(0)
            if im.format == "JPEG" and im.mode in ("RGB", "L", "CMYK", "YCbCr"):
                im.draft("RGB", (thumb_size, thumb_size))
            im.load()
            im = ImageOps.exif_transpose(im) or im
            im = _to_rgb(im)
            im.thumbnail((thumb_size, thumb_size), Image.Resampling.LANCZOS)
            buf = io.BytesIO()
            im.save(buf, "JPEG", quality=85, optimize=True)
        return buf.getvalue()

    # -------------------------------------------------------------- errors
    @app.exception_handler(InvalidArgumentError)
    async def _invalid(request: Request, exc: InvalidArgumentError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ImageError)
    async def _bad_image(request: Request, exc: ImageError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(VarsitysrchError)
    async def _library_error(request: Request, exc: VarsitysrchError) -> JSONResponse:
        log.exception("request failed: %s", exc)
        return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error")
        return JSONResponse({"detail": "internal server error"}, status_code=500)

    # -------------------------------------------------------------- page
    @app.get("/", include_in_schema=False)
    def index() -> Response:
        return Response(
            static["index.html"],
            media_type=_STATIC["index.html"],
            headers={"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"},
        )

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in static:
            raise HTTPException(404, "no such file")
        return Response(static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    # -------------------------------------------------------------- API
    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness, and what is being served."""
        return {
            "status": "ok",
            "version": __version__,
            "images": len(ids),
            "clusters": int(searcher.k),
            "nprobe": int(searcher.default_nprobe),
            "extractor": searcher.extractor.name if searcher.extractor is not None else None,
            "search_by_image": embedder is not None,
            "images_served": root is not None,
            "max_upload_bytes": max_upload_bytes,
            "max_top_n": MAX_TOP_N,
        }

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    def metrics_text() -> PlainTextResponse:
        """Prometheus text format: requests, errors and latency by route template and status."""
        text = metrics.render(
            {
                "varsitysrch_catalogue_images": ("Images in the catalogue.", float(len(ids))),
                "varsitysrch_clusters": ("Clusters in the model.", float(searcher.k)),
            }
        )
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    top_n_doc = "number of results (default 10)"
    nprobe_doc = "clusters to scan (default: the model's calibrated value)"
    self_doc = "with image_id: keep the query image in the results"

    @app.post("/search", tags=["search"])
    def search_post(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the query photo")] = None,
        image_id: Annotated[str | None, Form(description="or: a catalogue image id to search with")] = None,
        top_n: Annotated[int | None, Form(ge=1, le=MAX_TOP_N, description=top_n_doc)] = None,
        nprobe: Annotated[int | None, Form(ge=1, description=nprobe_doc)] = None,
        exact: Annotated[bool | None, Form(description="scan every cluster")] = None,
        include_self: Annotated[bool | None, Form(description=self_doc)] = None,
        q_top_n: Annotated[
            int | None, Query(alias="top_n", ge=1, le=MAX_TOP_N, description=top_n_doc)
        ] = None,
        q_nprobe: Annotated[int | None, Query(alias="nprobe", ge=1, description=nprobe_doc)] = None,
        q_exact: Annotated[bool | None, Query(alias="exact")] = None,
        q_include_self: Annotated[bool | None, Query(alias="include_self")] = None,
    ) -> dict[str, Any]:
        """Search with an uploaded photo (field ``image``) or a catalogue image (field ``image_id``).

        ``top_n``, ``nprobe``, ``exact`` and ``include_self`` may be form fields or query parameters.
        """
        n = pick(top_n, q_top_n, 10)
        p = pick(nprobe, q_nprobe, None)
        ex = bool(pick(exact, q_exact, False))
        inc = bool(pick(include_self, q_include_self, True))
        has_file = image is not None and (bool(image.filename) or image.size not in (None, 0))
        if has_file and image_id:
            raise HTTPException(422, "send either an image file or an image_id, not both")
        if image_id:
            return search_by_id(request, image_id, n, p, ex, inc)
        if image is None or not has_file:
            raise HTTPException(422, "send an image file (multipart field 'image') or an image_id")
        t0 = time.perf_counter()
        data = image.file.read(max_upload_bytes + 1)
        if len(data) > max_upload_bytes:
            raise HTTPException(413, too_large)
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        v = embed_upload(data, image.filename)
        query = {"kind": "upload", "filename": image.filename, "bytes": len(data)}
        return run_search(
            request, query, lambda: searcher.search_vector(v, n, nprobe=p, exact=ex), t0, n, p, ex
        )

    @app.get("/search", tags=["search"])
    def search_get(
        request: Request,
        image_id: Annotated[str, Query(description="a catalogue image id")],
        top_n: Annotated[int, Query(ge=1, le=MAX_TOP_N, description=top_n_doc)] = 10,
        nprobe: Annotated[int | None, Query(ge=1, description=nprobe_doc)] = None,
        exact: Annotated[bool, Query(description="scan every cluster")] = False,
        include_self: Annotated[bool, Query(description="keep the query image in the results")] = True,
    ) -> dict[str, Any]:
        """Search with a catalogue image."""
        return search_by_id(request, image_id, top_n, nprobe, exact, include_self)

    @app.get("/images/{image_id:path}", tags=["images"], response_class=FileResponse)
    def get_image(image_id: str) -> FileResponse:
        """A catalogue image, as stored."""
        p = source_path(image_id)
        media = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        if not media.startswith("image/"):
            media = "application/octet-stream"
        return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/thumbnails/{image_id:path}", tags=["images"], response_class=Response)
    def get_thumbnail(image_id: str) -> Response:
        """A JPEG thumbnail (longest side ``thumb_size``), cached on disk by id and modification time."""
        src = source_path(image_id)
        st = src.stat()
        key = hashlib.sha256(f"v1\0{src}\0{st.st_mtime_ns}\0{st.st_size}\0{thumb_size}".encode()).hexdigest()
        cached = thumbs_dir / key[:2] / f"{key}.jpg"
        headers = {"Cache-Control": "public, max-age=3600", "ETag": f'"{key[:32]}"'}
        if cached.is_file():
            metrics.thumbnail("hit")
            return FileResponse(cached, media_type="image/jpeg", headers=headers)
        metrics.thumbnail("miss")
        data = make_thumbnail(src)
        try:
            with atomic_path(cached) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:  # a read-only cache still serves thumbnails
            log.warning("cannot cache thumbnail %s: %s", cached, exc)
        return Response(data, media_type="image/jpeg", headers=headers)

    @app.get("/clusters", tags=["clusters"])
    def list_clusters(
        request: Request,
        sample: Annotated[int, Query(ge=0, le=50, description="members shown per cluster")] = 4,
    ) -> dict[str, Any]:
        """Every cluster: its size and the first few members."""
        out = []
        for c in range(searcher.k):
            rows = searcher.members(c)
            out.append(
                {
                    "id": c,
                    "size": len(rows),
                    "url": f"{base(request)}/clusters/{c}",
                    "sample": [member_dict(request, int(r)) for r in rows[:sample]],
                }
            )
        return {"k": int(searcher.k), "images": len(ids), "clusters": out}

    @app.get("/clusters/{cluster_id}", tags=["clusters"])
    def get_cluster(
        request: Request,
        cluster_id: int,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> dict[str, Any]:
        """A cluster's members (catalogue order), ``limit`` at a time from ``offset``."""
        if not 0 <= cluster_id < searcher.k:
            raise HTTPException(404, f"cluster {cluster_id} does not exist (k = {searcher.k})")
        rows = searcher.members(cluster_id)
        page = rows[offset : offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else None
        return {
            "id": cluster_id,
            "size": len(rows),
            "offset": offset,
            "limit": limit,
            "next_offset": nxt,
            "prev_offset": max(0, offset - limit) if offset > 0 else None,
            "members": [member_dict(request, int(r)) for r in page],
        }

    return app


def run_server(
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    **kw: Any,
) -> None:
    """Serve :func:`create_app` with uvicorn until interrupted.

    Keyword arguments named like :func:`create_app`'s (``image_root``, ``max_upload_bytes``,
    ``thumb_size``, ``cache_dir``, ``nprobe``, ``threads``) go to it; the rest go to
    ``uvicorn.run`` (``log_level``, ``access_log``, ``limit_concurrency``, ...).  One process:
    the model is loaded once and shared by the request threads (``workers`` cannot apply to
    an app object).
    """
    _import_fastapi()
    try:
        import uvicorn
    except ImportError as exc:
        raise missing("uvicorn", "serve", "the HTTP service") from exc
    app_kw = {k: kw.pop(k) for k in _APP_KEYS if k in kw}
    app = create_app(model_filename, csv_file, **app_kw)
    kw.setdefault("log_level", "info")
    uvicorn.run(app, host=host, port=port, **kw)
