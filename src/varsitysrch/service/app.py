"""The FastAPI app: :func:`create_app` wires small parts together; :func:`run_server` serves it.

Endpoints (OpenAPI at ``/docs``, self-hosted, and ``/openapi.json``)::

    GET  /                       the web page (plain HTML/JS/CSS, works offline)
    POST /search                 multipart: ``image`` (a file) or ``image_id``; ``top_n``, ``nprobe``,
                                 ``exact``, ``include_self`` as form fields or query parameters
    GET  /search?image_id=ID     search with a catalogue image
    POST /search/batch           many queries in one request: files ``images`` and/or fields ``image_ids``
    POST /search/feedback        "more / less like this": ``positive`` / ``negative`` catalogue ids and
                                 the original query (``image`` or ``image_id``, optional)
    GET  /attributes             the catalogue's attribute columns (what filter controls need)
    GET  /images/{id}            a catalogue image (only catalogue ids, only inside the image folder)
    GET  /thumbnails/{id}        a JPEG thumbnail, cached on disk
    GET  /clusters               every cluster: size and a few sample members
    GET  /clusters/{id}          a cluster's members, paged (``offset``, ``limit``)
    GET  /healthz                liveness and catalogue facts
    GET  /metrics                Prometheus text format
    POST /admin/reload           load the model again now if its files changed (else a no-op); off
                                 unless the operator sets an admin token (``Authorization: Bearer``)

Every search route takes ``where`` (repeatable: ``where=category=shoes&where=price<50``, or one
JSON object ``where={"price": {"lt": 50}}``) and ``collapse`` (near-duplicates shown once); each
hit carries the image's ``attributes`` and, when collapsed, its ``duplicates`` (``docs/shop.md``).

Errors are JSON ``{"detail": ...}``: 404 unknown image / cluster, 413 upload too large,
415 not an image in an accepted format, 422 invalid parameters or an image that cannot be
used (decompression bombs included; ``where`` filters with numbers no float holds or nested
deeper than ``{column: {op: [values]}}``), 503 (with ``Retry-After``) when the decode or embed
queue is full.  Nothing the service accepted makes it answer 500: ids and attribute values of
any bytes (a file name that is not UTF-8 is a str with lone surrogates) are percent-encoded from
their bytes in URLs (``/images/%FF.jpg`` finds that file again) and JSON-escaped (``\udcff``)
in bodies.

Concurrency: uploads are decoded on a bounded pool of their own and embedded together by a
micro-batcher (``batching``); both refuse work beyond their limit at once, and neither uses
the request thread pool, so health checks, metrics, thumbnails and search by id stay fast
under any upload load.  The model is reloaded without a restart when its files change
(``models``).
"""

import asyncio
import hashlib
import hmac
import json
import logging
import mimetypes
import os
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote, unquote_to_bytes

import numpy as np

from .._errors import ImageError, IncompatibleModelError, InvalidArgumentError, VarsitysrchError, missing
from .._options import SearchOptions
from .._pipeline import Query as SearchQuery
from .._pipeline import SearchResult, Stages, run_search
from .._rerank import model_graph, searcher_graph
from .._version import __version__
from .batching import BoundedPool, MicroBatcher, Overloaded
from .files import (
    UPLOAD_FORMATS_TEXT,
    UnsupportedFormat,
    choose_root,
    make_thumbnail,
    open_upload,
)
from .files import resolve_image as _resolve_image
from .metrics import CONTENT_TYPE, Metrics
from .middleware import BodyLimit, Observe
from .models import Generation, ModelHolder

log = logging.getLogger(__name__)

DEFAULT_MAX_UPLOAD = 20 * 2**20
#: Room for the multipart envelope (boundaries, part headers, small form fields) on top of the file.
MULTIPART_SLACK = 64 * 1024
MAX_TOP_N = 1000
MAX_PAGE = 500
#: Queries in one ``POST /search/batch``.
MAX_BATCH_QUERIES = 32
_STATIC = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "docs.js": "text/javascript; charset=utf-8",
}
_DOCS_ASSETS = {"swagger-ui.css": "text/css; charset=utf-8", "swagger-ui-bundle.js": "text/javascript"}
_PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_DOCS_CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)
_APP_KEYS = (
    "image_root",
    "extractor",
    "features_folder",
    "allow_roots",
    "max_upload_bytes",
    "thumb_size",
    "cache_dir",
    "nprobe",
    "threads",
    "decode_workers",
    "queue_limit",
    "max_batch",
    "batch_window_ms",
    "reload_interval",
    "report_dir",
    "admin_token",
)
#: Environment variable the CLI reads the admin token from (``serve --admin-token``)
ADMIN_TOKEN_ENV = "VARSITYSRCH_ADMIN_TOKEN"
#: Shortest admin token accepted
MIN_ADMIN_TOKEN = 16
#: files a catalogue report (varsitysrch report) holds, served under /report/
_REPORT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".jpg": "image/jpeg",
    ".csv": "text/csv; charset=utf-8",
    ".json": "application/json",
}


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
    base = resources.files("varsitysrch.service").joinpath("static")
    return {name: base.joinpath(name).read_bytes() for name in _STATIC}


def _swagger_assets() -> Path | None:
    """Swagger UI's files, from the ``fastapi-offline`` package (in the ``serve`` extra), if installed.

    Only its static files are used (Swagger UI 5, which reads the OpenAPI 3.1 schema FastAPI writes).
    """
    try:
        p = Path(str(resources.files("fastapi_offline").joinpath("static")))
    except (ImportError, TypeError):
        return None
    return p if all((p / name).is_file() for name in _DOCS_ASSETS) else None


def _positive_int(name: str, value: Any, low: int = 1, high: int | None = None) -> int:
    bad = isinstance(value, bool) or not isinstance(value, int) or value < low
    if bad or (high is not None and value > high):
        rule = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise InvalidArgumentError(f"{name} must be an integer {rule}; got {value!r}")
    return int(value)


@dataclass
class Settings:
    """create_app's arguments, checked."""

    model: Path
    csv: Path | None
    root: Path | None
    max_upload_bytes: int
    thumb_size: int
    thumbs_dir: Path
    nprobe: int | None
    threads: int | None
    decode_workers: int
    queue_limit: int
    max_batch: int
    batch_window_s: float
    reload_interval: float
    extractor: Any = None  # the operator's (name, "onnx:PATH" or Extractor); None: the model's
    features: Path | None = None  # the operator's feature store of a model without its index
    too_large: str = field(init=False)

    def __post_init__(self) -> None:
        mb = self.max_upload_bytes / 2**20
        self.too_large = f"upload too large: the limit is {self.max_upload_bytes} bytes ({mb:.3g} MiB)"


@dataclass
class Upcoming:
    """Uploads accepted and not yet handed to the embedder (the micro-batcher waits for them)."""

    n: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, k: int) -> None:
        with self._lock:
            self.n += k


@dataclass
class Service:
    """What the endpoints share: settings, the served model, the decode pool, metrics."""

    settings: Settings
    holder: ModelHolder
    decode: BoundedPool
    upcoming: Upcoming
    metrics: Metrics
    static: dict[str, bytes]
    swagger: Path | None
    report: Path | None = None  #: the catalogue report folder served at /report/ (None: none)
    admin_token: str | None = None  #: the token of POST /admin/reload (None: the admin API is off)

    @property
    def gen(self) -> Generation:
        return self.holder.current


# ---------------------------------------------------------------------------- building blocks
def _id_bytes(image_id: str) -> bytes:
    """An id's bytes: a file name that was not UTF-8 comes back as it was on disk."""
    try:
        return image_id.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that is no escaped byte (a JSON "\ud800" in ids.json)
        return image_id.encode("utf-8", "surrogatepass")


def _links(request: Any, image_id: str) -> dict[str, str]:
    q = quote(_id_bytes(image_id), safe="/")
    b = str(request.scope.get("root_path", "")).rstrip("/")
    return {"url": f"{b}/images/{q}", "thumbnail_url": f"{b}/thumbnails/{q}"}


def _hit_dict(request: Any, h: Any) -> dict[str, Any]:
    return {
        "image": h.image,
        "score": h.score,
        "cluster": h.cluster,
        "rank": h.rank,
        # calibrated against the catalogue's own nearest-neighbour scores (None: an older model)
        "confidence": getattr(h, "confidence", None),
        "match": getattr(h, "match", None),
        "close": getattr(h, "close", None),
        **_links(request, h.image),
    }


def _shop_fields(request: Any, gen: Generation, h: Any, d: dict[str, Any]) -> dict[str, Any]:
    """A hit's attributes (when the model has them) and collapsed duplicates (when there are)."""
    attrs = gen.searcher.attributes
    if attrs is not None:
        d["attributes"] = attrs.row(gen.searcher._id_index[h.image])
    if getattr(h, "duplicates", ()):
        d["duplicates"] = [{"image": i, **_links(request, i)} for i in h.duplicates]
    return d


def _where(values: list[str] | None) -> Any:
    """``where`` parameters: strings (all must hold), or one JSON object."""
    if not values:
        return None
    if len(values) == 1 and values[0].lstrip().startswith("{"):
        try:
            return json.loads(values[0])
        except ValueError as exc:  # huge integers too (Python's digit limit)
            raise _http(422, f"where is not a valid JSON object: {exc}") from None
        except RecursionError:
            raise _http(422, "where is nested too deeply (at most {column: {op: [values]}})") from None
    return values


def _http(status: int, detail: str, **headers: str) -> Exception:
    from fastapi import HTTPException

    return HTTPException(status, detail, headers=headers or None)


def _busy(svc: Service, exc: Overloaded) -> Exception:
    svc.metrics.rejections.labels(exc.stage).inc()
    return _http(503, str(exc), **{"Retry-After": "1"})


def _has_graph(s: Any) -> bool:
    """Whether the served model can search with ``rerank="k-reciprocal"`` (a current neighbour graph)."""
    try:
        searcher_graph(s.config, s.model_file.arrays, s.model_path)
    except IncompatibleModelError:
        return False
    return True


def _rerank_used(gen: Generation, options: SearchOptions) -> str:
    """The re-ranking a search ran: ``k-reciprocal`` or ``none`` (``rerank`` left out: the model's)."""
    if options.rerank is not None:
        return options.rerank
    s = gen.searcher
    return (
        "k-reciprocal"
        if model_graph(s.config, s.model_file.arrays, s.model_path, None) is not None
        else "none"
    )


def _check_nprobe(gen: Generation, nprobe: int | None, exact: bool) -> None:
    """``nprobe`` against the served model's search index (K-means clusters, or IVF lists), before
    any upload is read (the pipeline checks it again, against the same index)."""
    top, unit = gen.searcher.max_nprobe, gen.searcher.probe_unit
    if nprobe is not None and not exact and not 1 <= nprobe <= top:
        raise _http(
            422, f"nprobe must be in [1, {top}] (the {unit} of this model's search index); got {nprobe}"
        )


def _options(
    gen: Generation, top_n: int, nprobe: int | None, exact: bool, *, views: str | None = None,
    colour_weight: float = 0.0, where: Any = None, collapse: bool = False, include_self: bool = True,
    rerank: str | None = None,
) -> SearchOptions:  # fmt: skip
    """A route's parameters as the pipeline's :class:`~varsitysrch.SearchOptions` (422 when invalid,
    also ``rerank`` on a model without its neighbour graph)."""
    _check_nprobe(gen, nprobe, exact)
    opts = SearchOptions(
        top_n=top_n, nprobe=None if exact else nprobe, exact=exact, views=views,
        colour_weight=colour_weight, where=where, collapse=collapse, include_self=include_self,
        rerank=rerank,
    )  # fmt: skip
    if opts.rerank == "k-reciprocal":
        s = gen.searcher
        try:
            searcher_graph(s.config, s.model_file.arrays, s.model_path)
        except IncompatibleModelError as exc:
            raise _http(422, str(exc)) from None
    return opts


def _result(
    request: Any, gen: Generation, query: dict[str, Any], res: SearchResult, t0: float, options: SearchOptions
) -> dict[str, Any]:
    """A search's response: the query, the settings, what the index scanned and the hits."""
    return {
        "query": query,
        "top_n": options.top_n,
        "nprobe": None if options.exact else (options.nprobe or gen.searcher.default_nprobe),
        "exact": options.exact,
        "rerank": _rerank_used(gen, options),
        "scan": res.scan.to_dict(),
        "took_ms": round((time.perf_counter() - t0) * 1000, 3),
        "hits": [_shop_fields(request, gen, h, _hit_dict(request, h)) for h in res.hits],
    }


def _search_id(request: Any, gen: Generation, image_id: str, options: SearchOptions) -> dict[str, Any]:
    """A search by catalogue id (404 for an id the catalogue does not hold), in the calling thread."""
    t0 = time.perf_counter()
    if image_id not in gen.id_set:
        raise _http(404, f"image_id {image_id!r} is not in the catalogue")
    res = run_search(gen.searcher, SearchQuery(image_id=image_id), options)
    query = {"kind": "image_id", "image_id": image_id, **_links(request, image_id)}
    return _result(request, gen, query, res, t0, options)


def _decode_error(exc: BaseException, filename: str | None) -> Exception:
    name = f" {filename!r}" if filename else ""
    if isinstance(exc, UnsupportedFormat):
        fmt = f" ({exc.args[0]} is not accepted)" if exc.args and exc.args[0] else ""
        return _http(
            415, f"the upload{name} is not an image in a supported format ({UPLOAD_FORMATS_TEXT}){fmt}"
        )
    return _http(422, f"cannot use the uploaded image{name}: {exc}")


class _Reservation:
    """Decode slots a request takes on the event loop, before any thread works for it (all or
    none: :class:`Overloaded`, answered 503 at once).  The pipeline's decode stage runs each
    decode in the bounded pool on one of them; :meth:`close` gives back those not used."""

    def __init__(self, svc: Service, n: int) -> None:
        svc.decode.reserve(n)
        svc.upcoming.add(n)  # the micro-batcher waits for these (up to its window)
        self.svc, self.left = svc, n
        self._lock = threading.Lock()

    def _take(self) -> bool:
        with self._lock:
            if self.left <= 0:
                return False
            self.left -= 1
            return True

    def decode(self, job: Any) -> Any:
        """Run one decode job in the bounded pool and wait for it (the pipeline's decode stage)."""
        if not self._take():  # a decode beyond the reservation: a slot now, or 503
            self.svc.decode.reserve(1)
            self.svc.upcoming.add(1)
        try:
            return self.svc.decode.run_reserved(job).result()
        finally:
            self.svc.upcoming.add(-1)

    def close(self) -> None:
        with self._lock:
            n, self.left = self.left, 0
        if n:
            self.svc.decode.release(n)
            self.svc.upcoming.add(-n)


def _stages(gen: Generation, reservation: _Reservation) -> Stages:
    """The pipeline's costly stages as the service runs them: the upload opened through its format
    allow-list, decoded in the bounded decode pool, and every view of it embedded through the
    micro-batcher (the one ONNX session, whatever the views)."""
    batcher = gen.batcher
    assert batcher is not None

    def embed(batch: np.ndarray) -> np.ndarray:
        futs = batcher.submit_many(list(batch))
        return np.stack([f.result() for f in futs])

    return Stages(open=open_upload, decode=reservation.decode, embed=embed)


async def _search_uploads(
    svc: Service, gen: Generation, queries: list[SearchQuery], names: list[str | None], options: SearchOptions
) -> list[SearchResult | Exception]:
    """Run queries of uploads through the pipeline: a result each, or the HTTP error of an upload
    that cannot be used.  Their decode slots are reserved first (503 at once when the pool is
    full); errors that concern every query (busy, invalid parameters) fail the request."""
    from starlette.concurrency import run_in_threadpool

    if gen.batcher is None or gen.embedder is None:
        raise _http(
            501, "this model's features were not made by a known extractor: search by image_id instead"
        )
    try:
        reservation = _Reservation(svc, len(queries))
    except Overloaded as exc:
        raise _busy(svc, exc) from exc
    stages = _stages(gen, reservation)
    running = asyncio.Semaphore(max(2, svc.settings.decode_workers))  # the rest wait off the thread pool

    async def one(q: SearchQuery, name: str | None) -> SearchResult | Exception:
        async with running:
            try:
                return await run_in_threadpool(run_search, gen.searcher, q, options, stages)
            except (UnsupportedFormat, ImageError) as exc:
                return _decode_error(exc, name)

    try:
        got = await asyncio.gather(
            *(one(q, n) for q, n in zip(queries, names, strict=True)), return_exceptions=True
        )
    finally:
        reservation.close()
    for r in got:
        if isinstance(r, Overloaded):
            raise _busy(svc, r) from r
        if isinstance(r, BaseException) and not _is_http(r):
            raise r
    return list(got)  # type: ignore[arg-type]


def _is_http(exc: BaseException) -> bool:
    from fastapi import HTTPException

    return isinstance(exc, HTTPException)


def _pick(form_value: Any, query_value: Any, default: Any) -> Any:
    if form_value is not None:
        return form_value
    return default if query_value is None else query_value


def _dumps(content: Any) -> bytes:
    """JSON as UTF-8; a str that is not valid Unicode (an id with lone surrogates) is written with
    ASCII escapes (``\udcff``), so the body is always valid and a Python client gets the same str."""
    try:
        text = json.dumps(content, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":"))
        return text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(
            content, ensure_ascii=True, allow_nan=False, indent=None, separators=(",", ":")
        ).encode("ascii")


def _json_response_class() -> Any:
    from fastapi.responses import JSONResponse

    class SafeJSONResponse(JSONResponse):
        def render(self, content: Any) -> bytes:
            return _dumps(content)

    return SafeJSONResponse


# ---------------------------------------------------------------------------- routes
def _add_error_handlers(app: Any) -> None:
    from fastapi import Request
    from fastapi.encoders import jsonable_encoder
    from fastapi.exceptions import RequestValidationError
    from starlette.exceptions import HTTPException as StarletteHTTPException

    JSONResponse = _json_response_class()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> Any:
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Any:
        return JSONResponse({"detail": jsonable_encoder(exc.errors())}, status_code=422)

    @app.exception_handler(InvalidArgumentError)
    async def _invalid(request: Request, exc: InvalidArgumentError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(ImageError)
    async def _bad_image(request: Request, exc: ImageError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(VarsitysrchError)
    async def _library_error(request: Request, exc: VarsitysrchError) -> Any:
        log.exception("request failed: %s", exc)
        return JSONResponse({"detail": f"{type(exc).__name__}: {exc}"}, status_code=500)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Any:
        log.exception("unexpected error")
        return JSONResponse({"detail": "internal server error"}, status_code=500)


def _add_page_routes(app: Any, svc: Service) -> None:
    from fastapi.responses import HTMLResponse, Response

    @app.get("/", include_in_schema=False)
    def index() -> Response:
        headers = {"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"}
        return Response(svc.static["index.html"], media_type=_STATIC["index.html"], headers=headers)

    @app.get("/static/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if name not in svc.static:
            raise _http(404, "no such file")
        return Response(svc.static[name], media_type=_STATIC[name], headers={"Cache-Control": "no-cache"})

    @app.get("/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        if svc.swagger is not None:
            body = (
                '<noscript>The API schema: <a href="openapi.json">openapi.json</a></noscript>'
                '<div id="swagger-ui"></div>'
                '<script src="docs/assets/swagger-ui-bundle.js"></script>'
                '<script src="static/docs.js"></script>'
            )
            head = '<link rel="stylesheet" href="docs/assets/swagger-ui.css">'
        else:
            head = '<link rel="stylesheet" href="static/style.css">'
            body = (
                "<main><h1>varsitysrch API</h1><p>The interactive documentation needs the "
                "<code>fastapi-offline</code> package (<code>pip install 'varsitysrch[serve]'</code>). "
                'The API schema: <a href="openapi.json">openapi.json</a>.</p></main>'
            )
        html = (
            '<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>varsitysrch API</title><link rel="icon" href="data:,">{head}</head>'
            f"<body>{body}</body></html>"
        )
        return HTMLResponse(html, headers={"Content-Security-Policy": _DOCS_CSP, "Cache-Control": "no-cache"})

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> Response:
        from fastapi.responses import FileResponse

        if svc.swagger is None or name not in _DOCS_ASSETS:
            raise _http(404, "no such file")
        return FileResponse(svc.swagger / name, media_type=_DOCS_ASSETS[name])


def _add_report_routes(app: Any, svc: Service) -> None:
    """``/report/``: the catalogue report folder the operator named (only its own files)."""
    from fastapi.responses import FileResponse, RedirectResponse, Response

    from .._paths import resolve_image

    @app.get("/report", include_in_schema=False)
    def report_root() -> Response:
        if svc.report is None:
            raise _http(404, "no catalogue report is served (varsitysrch serve --report DIR)")
        return RedirectResponse("report/")

    @app.get("/report/{name:path}", include_in_schema=False)
    def report_file(name: str) -> Response:
        if svc.report is None:
            raise _http(404, "no catalogue report is served (varsitysrch serve --report DIR)")
        path = resolve_image(svc.report, name or "index.html")  # inside the folder, symlinks followed
        if path is None or not path.is_file() or path.suffix.lower() not in _REPORT_TYPES:
            raise _http(404, "no such file")
        headers = {"Content-Security-Policy": _PAGE_CSP, "Cache-Control": "no-cache"}
        return FileResponse(path, media_type=_REPORT_TYPES[path.suffix.lower()], headers=headers)


def _check_admin(svc: Service, request: Any) -> None:
    """The admin token, from this site only (see ``POST /admin/reload``)."""
    token = svc.admin_token
    if token is None:
        raise _http(
            403, f"the admin API is off: start the service with --admin-token (or ${ADMIN_TOKEN_ENV})"
        )
    headers = request.headers
    site = headers.get("sec-fetch-site")
    origin = headers.get("origin")
    if site == "cross-site" or (origin is not None and not _same_origin(origin, headers.get("host"))):
        raise _http(403, "the admin API refuses requests from other sites")
    scheme, _, given = (headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise _http(
            401,
            "the admin API needs the header 'Authorization: Bearer <token>'",
            **{"WWW-Authenticate": "Bearer"},
        )


def _same_origin(origin: str, host: str | None) -> bool:
    from urllib.parse import urlsplit

    try:
        netloc = urlsplit(origin).netloc
    except ValueError:
        return False
    return bool(host) and netloc.lower() == str(host).lower()


def _add_service_routes(app: Any, svc: Service) -> None:
    from fastapi import Request
    from fastapi.responses import Response

    @app.get("/healthz", tags=["service"])
    def healthz() -> dict[str, Any]:
        """Liveness, and what is being served."""
        gen = svc.gen
        ex = gen.searcher.extractor
        return {
            "status": "ok",
            "version": __version__,
            "images": len(gen.ids),
            "clusters": gen.k,
            "nprobe": int(gen.searcher.default_nprobe),
            "nprobe_unit": gen.searcher.probe_unit,
            "max_nprobe": int(gen.searcher.max_nprobe),
            "extractor": ex.name if ex is not None else None,
            "search_by_image": gen.embedder is not None,
            "images_served": svc.settings.root is not None,
            "max_upload_bytes": svc.settings.max_upload_bytes,
            "max_top_n": MAX_TOP_N,
            "max_batch_queries": MAX_BATCH_QUERIES,
            "model_generation": gen.number,
            "report": svc.report is not None,
            "rerank_graph": _has_graph(gen.searcher),
            # "match colour" by a classifier learned from this attributes column (None: by signature)
            "colour_labels": None
            if gen.searcher._colour_model is None
            else gen.searcher._colour_model.column,
        }

    @app.get("/metrics", tags=["service"], response_class=Response)
    def metrics_text() -> Response:
        """Prometheus text format: requests, errors and latency by route template and status, queues."""
        return Response(svc.metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/admin/reload", tags=["service"])
    def reload(request: Request) -> dict[str, Any]:
        """Load the model again now if its model file or CSV changed (a no-op otherwise).

        Off (403) unless the service was started with an admin token; then it needs the header
        ``Authorization: Bearer <token>`` (401 without it), and a request from another site
        (``Origin`` not this host, or ``Sec-Fetch-Site: cross-site``) is refused (403).
        """
        _check_admin(svc, request)
        changed = svc.holder.reload_if_changed()
        return {"reloaded": changed, "generation": svc.gen.number, "error": svc.holder.last_error}


_TOP_N_DOC = "number of results (default 10)"
_NPROBE_DOC = (
    "how much of the index to scan, in its unit (/healthz: nprobe_unit, max_nprobe): K-means clusters, or "
    "IVF lists for a large catalogue (default: the model's calibrated value)"
)
_COLOUR_DOC = "weight of the product's colour in the score, 0..1 (0: off; 0.15 = match colour)"
_SELF_DOC = "with image_id: keep the query image in the results"
_WHERE_DOC = (
    "attribute filter, repeatable, all must hold: category=shoes, brand in a,b, price<50, in_stock=true; "
    'or one JSON object {"price": {"lt": 50}}'
)
_COLLAPSE_DOC = "show near-duplicates of one product once (they are listed in the hit's duplicates)"
_RERANK_DOC = (
    "k-reciprocal or none (left out: the model's, k-reciprocal when it has a neighbour graph, as models "
    "trained by default do): the top 100 re-ordered over the catalogue's neighbour graph, the first hit kept"
)
_VIEWS_DOC = (
    "query views: none (the whole photo, the default), auto (five 70 % crops too for a shop photo "
    "against a studio catalogue), crops, flip or crops+flip"
)


async def _read_upload(svc: Service, image: Any) -> bytes:
    limit = svc.settings.max_upload_bytes
    data = await image.read(limit + 1)
    if len(data) > limit:
        raise _http(413, svc.settings.too_large)
    if not data:
        raise _http(
            422, f"the uploaded file {image.filename!r} is empty" if image.filename else "empty upload"
        )
    return data


def _add_search_routes(app: Any, svc: Service) -> None:
    from fastapi import File, Form, Query, Request, UploadFile
    from starlette.concurrency import run_in_threadpool

    @app.post("/search", tags=["search"])
    async def search_post(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the query photo")] = None,
        image_id: Annotated[str | None, Form(description="or: a catalogue image id to search with")] = None,
        top_n: Annotated[int | None, Form(ge=1, le=MAX_TOP_N, description=_TOP_N_DOC)] = None,
        nprobe: Annotated[int | None, Form(ge=1, description=_NPROBE_DOC)] = None,
        exact: Annotated[bool | None, Form(description="scan every cluster")] = None,
        include_self: Annotated[bool | None, Form(description=_SELF_DOC)] = None,
        colour_weight: Annotated[float | None, Form(ge=0, le=1, description=_COLOUR_DOC)] = None,
        q_top_n: Annotated[
            int | None, Query(alias="top_n", ge=1, le=MAX_TOP_N, description=_TOP_N_DOC)
        ] = None,
        q_nprobe: Annotated[int | None, Query(alias="nprobe", ge=1, description=_NPROBE_DOC)] = None,
        q_exact: Annotated[bool | None, Query(alias="exact")] = None,
        q_include_self: Annotated[bool | None, Query(alias="include_self")] = None,
        q_colour_weight: Annotated[
            float | None, Query(alias="colour_weight", ge=0, le=1, description=_COLOUR_DOC)
        ] = None,
        where: Annotated[list[str] | None, Query(description=_WHERE_DOC)] = None,
        collapse: Annotated[bool, Query(description=_COLLAPSE_DOC)] = False,
        views: Annotated[str, Query(description=_VIEWS_DOC)] = "none",
        rerank: Annotated[str | None, Query(description=_RERANK_DOC)] = None,
    ) -> dict[str, Any]:
        """Search with an uploaded photo (field ``image``) or a catalogue image (field ``image_id``).

        ``top_n``, ``nprobe``, ``exact`` and ``include_self`` may be form fields or query parameters.
        """
        gen = svc.gen  # one model for the whole request, even if a reload lands meanwhile
        n, p = _pick(top_n, q_top_n, 10), _pick(nprobe, q_nprobe, None)
        ex, inc = bool(_pick(exact, q_exact, False)), bool(_pick(include_self, q_include_self, True))
        w = float(_pick(colour_weight, q_colour_weight, 0.0))
        has_file = image is not None and (bool(image.filename) or image.size not in (None, 0))
        if has_file and image_id:
            raise _http(422, "send either an image file or an image_id, not both")
        opts = _options(
            gen, n, p, ex, views=views, colour_weight=w, where=_where(where), collapse=collapse,
            include_self=inc, rerank=rerank,
        )  # fmt: skip
        if image_id:
            return await run_in_threadpool(_search_id, request, gen, image_id, opts)
        if image is None or not has_file:
            raise _http(422, "send an image file (multipart field 'image') or an image_id")
        t0 = time.perf_counter()
        data = await _read_upload(svc, image)
        (res,) = await _search_uploads(svc, gen, [SearchQuery(image=data)], [image.filename], opts)
        if isinstance(res, Exception):
            raise res
        query = {"kind": "upload", "filename": image.filename, "bytes": len(data), "views": res.views}
        return _result(request, gen, query, res, t0, opts)

    @app.get("/search", tags=["search"])
    def search_get(
        request: Request,
        image_id: Annotated[str, Query(description="a catalogue image id")],
        top_n: Annotated[int, Query(ge=1, le=MAX_TOP_N, description=_TOP_N_DOC)] = 10,
        nprobe: Annotated[int | None, Query(ge=1, description=_NPROBE_DOC)] = None,
        exact: Annotated[bool, Query(description="scan every cluster")] = False,
        include_self: Annotated[bool, Query(description="keep the query image in the results")] = True,
        colour_weight: Annotated[float, Query(ge=0, le=1, description=_COLOUR_DOC)] = 0.0,
        where: Annotated[list[str] | None, Query(description=_WHERE_DOC)] = None,
        collapse: Annotated[bool, Query(description=_COLLAPSE_DOC)] = False,
        rerank: Annotated[str | None, Query(description=_RERANK_DOC)] = None,
    ) -> dict[str, Any]:
        """Search with a catalogue image."""
        gen = svc.gen
        opts = _options(
            gen, top_n, nprobe, exact, colour_weight=colour_weight, where=_where(where), collapse=collapse,
            include_self=include_self, rerank=rerank,
        )  # fmt: skip
        return _search_id(request, gen, image_id, opts)


def _add_shop_routes(app: Any, svc: Service) -> None:
    """``GET /attributes`` and ``POST /search/feedback`` (docs/shop.md)."""
    from fastapi import File, Form, Query, Request, UploadFile
    from starlette.concurrency import run_in_threadpool

    @app.get("/attributes", tags=["search"])
    def attributes() -> dict[str, Any]:
        """The attribute columns of the catalogue: name, kind (number, bool, string), missing values,
        the range of a number column and the most common values of a text column."""
        attrs = svc.gen.searcher.attributes
        return {"columns": attrs.describe() if attrs is not None else []}

    @app.post("/search/feedback", tags=["search"])
    async def search_feedback(
        request: Request,
        image: Annotated[UploadFile | None, File(description="the original query photo (optional)")] = None,
        image_id: Annotated[str | None, Form(description="or: the original query, a catalogue id")] = None,
        positive: Annotated[list[str] | None, Form(description="catalogue ids: more like these")] = None,
        negative: Annotated[list[str] | None, Form(description="catalogue ids: less like these")] = None,
        top_n: Annotated[int, Query(ge=1, le=MAX_TOP_N, description=_TOP_N_DOC)] = 10,
        nprobe: Annotated[int | None, Query(ge=1, description=_NPROBE_DOC)] = None,
        exact: Annotated[bool, Query(description="scan every cluster")] = False,
        where: Annotated[list[str] | None, Query(description=_WHERE_DOC)] = None,
        collapse: Annotated[bool, Query(description=_COLLAPSE_DOC)] = False,
    ) -> dict[str, Any]:
        """Search with relevance feedback (Rocchio, ``docs/shop.md``): the query moved toward the
        ``positive`` items and away from the ``negative`` ones; judged items (and a catalogue
        query) are not returned."""
        gen = svc.gen
        pos, neg = list(positive or []), list(negative or [])
        for i in [*pos, *neg, *([image_id] if image_id else [])]:
            if i not in gen.id_set:
                raise _http(404, f"image_id {i!r} is not in the catalogue")
        has_file = image is not None and (bool(image.filename) or image.size not in (None, 0))
        if has_file and image_id:
            raise _http(422, "send either an image file or an image_id as the query, not both")
        opts = _options(gen, top_n, nprobe, exact, views=None, where=_where(where), collapse=collapse)
        t0 = time.perf_counter()
        judged: dict[str, Any] = {"positive": tuple(pos), "negative": tuple(neg)}
        info: dict[str, Any] = {"kind": "feedback", "image_id": image_id}
        if has_file and image is not None:
            data = await _read_upload(svc, image)
            q = SearchQuery(image=data, **judged)
            (res,) = await _search_uploads(svc, gen, [q], [image.filename], opts)
            if isinstance(res, Exception):
                raise res
            info = {"kind": "feedback", "filename": image.filename, "bytes": len(data)}
        else:
            q = SearchQuery(image_id=image_id or None, **judged)
            res = await run_in_threadpool(run_search, gen.searcher, q, opts)
        info.update(positive=pos, negative=neg)
        return _result(request, gen, info, res, t0, opts)


def _add_batch_route(app: Any, svc: Service) -> None:
    from fastapi import File, Form, Query, Request, UploadFile
    from starlette.concurrency import run_in_threadpool

    @app.post("/search/batch", tags=["search"])
    async def search_batch(
        request: Request,
        images: Annotated[list[UploadFile] | None, File(description="query photos")] = None,
        image_ids: Annotated[list[str] | None, Form(description="catalogue image ids")] = None,
        top_n: Annotated[int, Query(ge=1, le=MAX_TOP_N, description=_TOP_N_DOC)] = 10,
        nprobe: Annotated[int | None, Query(ge=1, description=_NPROBE_DOC)] = None,
        exact: Annotated[bool, Query(description="scan every cluster")] = False,
        include_self: Annotated[bool, Query(description=_SELF_DOC)] = True,
        colour_weight: Annotated[float, Query(ge=0, le=1, description=_COLOUR_DOC)] = 0.0,
        where: Annotated[list[str] | None, Query(description=_WHERE_DOC)] = None,
        collapse: Annotated[bool, Query(description=_COLLAPSE_DOC)] = False,
        views: Annotated[str, Query(description=_VIEWS_DOC)] = "none",
        rerank: Annotated[str | None, Query(description=_RERANK_DOC)] = None,
    ) -> dict[str, Any]:
        """Many queries in one request: uploads first (in order), then ids.

        Each query is searched exactly as ``POST /search`` / ``GET /search`` search it, with the
        same parameters (views, colour, filter, collapse): each upload is decoded once in the
        bounded pool and each of its views embedded once, through the micro-batcher that embeds
        the batch's uploads together.

        Each entry of ``results`` is a search result, or ``{"query": ..., "error": {"status", "detail"}}``
        for a query that failed on its own (an unknown id, a file that is not an image); the request
        itself fails only for what concerns all of them (parameters, size, 503 when busy).
        """
        gen = svc.gen
        files, id_list = list(images or []), list(image_ids or [])
        if not files and not id_list:
            raise _http(422, "send at least one file (field 'images') or id (field 'image_ids')")
        if len(files) + len(id_list) > MAX_BATCH_QUERIES:
            raise _http(
                422, f"a batch holds at most {MAX_BATCH_QUERIES} queries; got {len(files) + len(id_list)}"
            )
        if len(files) > svc.decode.limit:
            raise _http(422, f"a batch holds at most {svc.decode.limit} uploads; got {len(files)}")
        opts = _options(
            gen, top_n, nprobe, exact, views=views, colour_weight=colour_weight, where=_where(where),
            collapse=collapse, include_self=include_self, rerank=rerank,
        )  # fmt: skip
        t0 = time.perf_counter()
        datas = [await _read_upload(svc, f) for f in files]
        found = (
            await _search_uploads(
                svc, gen, [SearchQuery(image=d) for d in datas], [f.filename for f in files], opts
            )
            if files
            else []
        )

        def answer() -> list[dict[str, Any]]:
            out: list[dict[str, Any]] = []
            for f, d, res in zip(files, datas, found, strict=True):
                query = {"kind": "upload", "filename": f.filename, "bytes": len(d)}
                if isinstance(res, Exception):
                    err = {"status": res.status_code, "detail": res.detail}  # type: ignore[attr-defined]
                    out.append({"query": query, "error": err})
                    continue
                out.append(_result(request, gen, {**query, "views": res.views}, res, t0, opts))
            for i in id_list:
                if i not in gen.id_set:  # this query's own error; the others are answered
                    err = {"status": 404, "detail": f"image_id {i!r} is not in the catalogue"}
                    out.append({"query": {"kind": "image_id", "image_id": i}, "error": err})
                    continue
                out.append(_search_id(request, gen, i, opts))
            return out

        results = await run_in_threadpool(answer)
        return {
            "count": len(results),
            "took_ms": round((time.perf_counter() - t0) * 1000, 3),
            "results": results,
        }


def _raw_id(request: Any, prefix: str) -> str | None:
    """The id in the request's raw path after ``prefix``, from its percent-encoded bytes (a file name
    that is not UTF-8: the decoded path holds U+FFFD where its bytes were)."""
    raw = request.scope.get("raw_path")
    if not isinstance(raw, bytes):
        return None
    raw = raw.split(b"?", 1)[0]
    root = str(request.scope.get("root_path", "")).rstrip("/").encode("latin-1", "replace")
    if root and raw.startswith(root):
        raw = raw[len(root) :]
    if not raw.startswith(prefix.encode()):
        return None
    return unquote_to_bytes(raw[len(prefix) :]).decode("utf-8", "surrogateescape")


def _add_image_routes(app: Any, svc: Service) -> None:
    from fastapi import Request
    from fastapi.responses import FileResponse, Response

    from .._io import atomic_path

    size = svc.settings.thumb_size

    def source(request: Any, image_id: str, prefix: str) -> Path:
        if image_id not in svc.gen.id_set:
            image_id = _raw_id(request, prefix) or image_id  # an id whose bytes are not UTF-8
        if image_id not in svc.gen.id_set:
            raise _http(404, f"image_id {image_id!r} is not in the catalogue")
        root = svc.settings.root
        if root is None:
            raise _http(
                404, "the catalogue's image folder is not served: start the service with --images DIR"
            )
        p = _resolve_image(root, image_id)
        if p is None:
            raise _http(404, f"image {image_id!r} is not available")
        return p

    @app.get("/images/{image_id:path}", tags=["images"], response_class=FileResponse)
    def get_image(request: Request, image_id: str) -> FileResponse:
        """A catalogue image, as stored."""
        p = source(request, image_id, "/images/")
        media = mimetypes.guess_type(p.name)[0] or "application/octet-stream"
        if not media.startswith("image/"):
            media = "application/octet-stream"
        return FileResponse(p, media_type=media, headers={"Cache-Control": "public, max-age=3600"})

    @app.get("/thumbnails/{image_id:path}", tags=["images"], response_class=Response)
    def get_thumbnail(request: Request, image_id: str) -> Response:
        """A square JPEG thumbnail (side ``thumb_size``, letterboxed), cached on disk by id and mtime."""
        src = source(request, image_id, "/thumbnails/")
        st = src.stat()
        key = hashlib.sha256(
            b"v2\0" + os.fsencode(src) + f"\0{st.st_mtime_ns}\0{st.st_size}\0{size}".encode()
        ).hexdigest()
        cached = svc.settings.thumbs_dir / key[:2] / f"{key}.jpg"
        headers = {"Cache-Control": "public, max-age=3600", "ETag": f'"{key[:32]}"'}
        if cached.is_file():
            svc.metrics.thumbs.labels("hit").inc()
            return FileResponse(cached, media_type="image/jpeg", headers=headers)
        svc.metrics.thumbs.labels("miss").inc()
        try:
            data = make_thumbnail(src, size)
        except ImageError as exc:
            raise _http(404, f"image {image_id!r} cannot be shown: {exc}") from exc
        try:
            with atomic_path(cached) as tmp:
                tmp.write_bytes(data)
        except OSError as exc:  # a read-only cache still serves thumbnails
            log.warning("cannot cache thumbnail %s: %s", cached, exc)
        return Response(data, media_type="image/jpeg", headers=headers)


def _add_cluster_routes(app: Any, svc: Service) -> None:
    from fastapi import Query, Request

    def member(request: Any, gen: Generation, row: int) -> dict[str, Any]:
        return {"image": gen.ids[row], **_links(request, gen.ids[row])}

    def members(gen: Generation, cluster: int) -> Any:
        """A cluster's rows, most typical first: the same order as the report's contact sheets."""
        from .._central import central_first

        return central_first(gen.searcher.members(cluster), gen.searcher.model_file.distances)

    @app.get("/clusters", tags=["clusters"])
    def list_clusters(
        request: Request,
        sample: Annotated[int, Query(ge=0, le=50, description="members shown per cluster")] = 4,
    ) -> dict[str, Any]:
        """Every cluster: its size and its most typical members (nearest its centre, as in the report)."""
        gen = svc.gen
        b = str(request.scope.get("root_path", "")).rstrip("/")
        out = []
        for c in range(gen.k):
            rows = members(gen, c)
            out.append(
                {
                    "id": c,
                    "size": len(rows),
                    "url": f"{b}/clusters/{c}",
                    "sample": [member(request, gen, int(r)) for r in rows[:sample]],
                }
            )
        return {"k": gen.k, "images": len(gen.ids), "clusters": out}

    @app.get("/clusters/{cluster_id}", tags=["clusters"])
    def get_cluster(
        request: Request,
        cluster_id: int,
        offset: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 50,
    ) -> dict[str, Any]:
        """A cluster's members, most typical first (as in the report), ``limit`` at a time from ``offset``."""
        gen = svc.gen
        if not 0 <= cluster_id < gen.k:
            raise _http(404, f"cluster {cluster_id} does not exist (k = {gen.k})")
        rows = members(gen, cluster_id)
        page = rows[offset : offset + limit]
        nxt = offset + limit if offset + limit < len(rows) else None
        return {
            "id": cluster_id,
            "size": len(rows),
            "offset": offset,
            "limit": limit,
            "next_offset": nxt,
            "prev_offset": max(0, offset - limit) if offset > 0 else None,
            "members": [member(request, gen, int(r)) for r in page],
        }


# ---------------------------------------------------------------------------- assembly
def _settings(
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None,
    image_root: str | os.PathLike[str] | None,
    **kw: Any,
) -> Settings:
    from .._extractors import cache_dir as user_cache_dir

    cores = os.cpu_count() or 1
    cache_dir = kw["cache_dir"]
    window = kw["batch_window_ms"]
    if isinstance(window, bool) or not isinstance(window, int | float) or not 0 <= window <= 1000:
        raise InvalidArgumentError(f"batch_window_ms must be a number in [0, 1000]; got {window!r}")
    interval = kw["reload_interval"]
    if isinstance(interval, bool) or not isinstance(interval, int | float) or interval < 0:
        raise InvalidArgumentError(f"reload_interval must be a number >= 0 (0: off); got {interval!r}")
    if image_root is not None and not Path(image_root).is_dir():
        raise InvalidArgumentError(f"image_root must be a folder; got {str(image_root)!r}")
    workers = kw["decode_workers"] if kw["decode_workers"] is not None else max(1, min(4, cores))
    return Settings(
        model=Path(model_filename),
        csv=Path(csv_file) if csv_file is not None else None,
        root=Path(image_root) if image_root is not None else None,  # final choice: _serve_root
        max_upload_bytes=_positive_int("max_upload_bytes", kw["max_upload_bytes"]),
        thumb_size=_positive_int("thumb_size", kw["thumb_size"], 16, 2048),
        thumbs_dir=Path(cache_dir) if cache_dir is not None else user_cache_dir() / "thumbnails",
        nprobe=kw["nprobe"],
        threads=kw["threads"],
        decode_workers=_positive_int("decode_workers", workers, 1, 64),
        queue_limit=_positive_int("queue_limit", kw["queue_limit"], 1, 4096),
        max_batch=_positive_int("max_batch", kw["max_batch"], 1, 256),
        batch_window_s=float(window) / 1000,
        reload_interval=float(interval),
        extractor=kw.get("extractor"),
        features=Path(kw["features_folder"]) if kw.get("features_folder") is not None else None,
    )


def _holder(s: Settings, metrics: Metrics, upcoming: Upcoming) -> ModelHolder:
    from .._extractors import Embedder
    from .._search import Searcher

    def make_batcher(embedder: Any) -> MicroBatcher:
        limit = max(s.queue_limit, s.max_batch)
        return MicroBatcher(
            embedder.embed, max_batch=s.max_batch, window_s=s.batch_window_s, limit=limit,
            observe=metrics.observe_batch,
            upcoming=lambda: upcoming.n,
        )  # fmt: skip

    return ModelHolder(
        s.model,
        s.csv,
        make_searcher=lambda: Searcher(
            s.model,
            s.csv,
            nprobe=s.nprobe,
            threads=s.threads,
            extractor=s.extractor,
            features_folder=s.features,
        ),
        make_embedder=lambda ex: Embedder(ex, threads=s.threads),
        make_batcher=make_batcher,
        on_reload=lambda result: metrics.reloads.labels(result).inc(),
    )


def _serve_root(s: Settings, gen: Generation, allow_roots: tuple[str | os.PathLike[str], ...]) -> Path | None:
    """The operator's folder, or the model's recorded one inside an allowed root (chosen once, at start)."""
    recorded = gen.searcher.config.get("image_root")
    return choose_root(s.root, recorded if isinstance(recorded, str) else None, allow_roots)


def create_app(
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None = None,
    *,
    image_root: str | os.PathLike[str] | None = None,
    allow_roots: tuple[str | os.PathLike[str], ...] | list[str | os.PathLike[str]] = (),
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD,
    thumb_size: int = 256,
    cache_dir: str | os.PathLike[str] | None = None,
    nprobe: int | None = None,
    threads: int | None = None,
    decode_workers: int | None = None,
    queue_limit: int = 32,
    max_batch: int = 8,
    batch_window_ms: float = 5.0,
    reload_interval: float = 2.0,
    extractor: Any = None,
    features_folder: str | os.PathLike[str] | None = None,
    report_dir: str | os.PathLike[str] | None = None,
    admin_token: str | None = None,
) -> Any:
    """A FastAPI app serving search over one model; the model and extractor load now.

    Args:
        model_filename: a model file written by :func:`~varsitysrch.train_clusters`.
        csv_file: its assignments CSV (optional; checked against the model).
        image_root: the folder catalogue images and thumbnails are served from.
        allow_roots: without ``image_root``, the folder recorded at extraction is served only
            if it lies inside one of these (a model file never chooses what is served by itself).
        max_upload_bytes: largest accepted upload (413 beyond).
        thumb_size: side of the (square) thumbnails, in pixels.
        cache_dir: thumbnail cache (default: ``<user cache>/varsitysrch/thumbnails``).
        nprobe: default clusters to scan (``None``: the model's calibrated value).
        threads: ONNX Runtime threads (default: every core).
        decode_workers: threads decoding uploads (default: cores, at most 4).
        queue_limit: uploads held per stage (decoding, embedding) before answering 503.
        max_batch: most query images embedded in one inference call (1: no micro-batching).
        batch_window_ms: how long the embedder waits for more queries after the first.
        reload_interval: seconds between checks of the model/CSV files for a new version (0: off).
        extractor: the query extractor (``"onnx:PATH"``, a name or an ``Extractor``), checked
            against the model (``None``: the recorded built-in one; a user ONNX graph must be named).
        features_folder: the feature store of a model whose index is not embedded (default: the
            recorded one, only inside the model file's folder).
        report_dir: a catalogue report folder written by :func:`~varsitysrch.make_report`, served at
            ``/report/`` and linked from the page as "Catalogue" (``None``: no report).
        admin_token: the secret ``POST /admin/reload`` needs (``Authorization: Bearer <token>``, at
            least 16 printable characters); ``None``: the admin API is off (403).  Automatic reloads
            (``reload_interval``) do not need it.
    """
    _import_fastapi()
    if admin_token is not None and (
        not isinstance(admin_token, str)
        or len(admin_token) < MIN_ADMIN_TOKEN
        or not all(33 <= ord(ch) <= 126 for ch in admin_token)
    ):
        got = f"{len(admin_token)} characters" if isinstance(admin_token, str) else type(admin_token).__name__
        raise InvalidArgumentError(
            f"admin_token must be at least {MIN_ADMIN_TOKEN} printable ASCII characters without spaces; "
            f"got {got}"
        )
    from fastapi import FastAPI

    s = _settings(
        model_filename, csv_file, image_root,
        max_upload_bytes=max_upload_bytes, thumb_size=thumb_size, cache_dir=cache_dir, nprobe=nprobe,
        threads=threads, decode_workers=decode_workers, queue_limit=queue_limit, max_batch=max_batch,
        batch_window_ms=batch_window_ms, reload_interval=reload_interval, extractor=extractor,
        features_folder=features_folder,
    )  # fmt: skip
    metrics = Metrics()
    decode = BoundedPool(s.decode_workers, max(s.queue_limit, s.decode_workers), "decode")
    upcoming = Upcoming()
    holder = _holder(s, metrics, upcoming)
    s.root = _serve_root(s, holder.current, tuple(allow_roots))
    svc = Service(s, holder, decode, upcoming, metrics, _static_files(), _swagger_assets())
    svc.admin_token = admin_token
    if report_dir is not None:
        if not (Path(report_dir) / "report.json").is_file():
            raise InvalidArgumentError(
                f"report_dir must be a report folder written by `varsitysrch report`; got {str(report_dir)!r}"
            )
        svc.report = Path(report_dir).resolve()
    _add_gauges(svc)

    @asynccontextmanager
    async def lifespan(app: Any) -> Any:
        svc.holder.start(s.reload_interval)
        try:
            yield
        finally:  # the pools stay: an app may be started again (their idle threads cost nothing)
            svc.holder.stop()

    app = FastAPI(
        title="varsitysrch",
        version=__version__,
        description="Product image search: upload a photo (or pick a catalogue image), get similar products.",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
        default_response_class=_json_response_class(),
    )
    app.state.service = svc
    app.state.metrics = metrics
    app.add_middleware(
        BodyLimit, limit=s.max_upload_bytes + MULTIPART_SLACK, detail=s.too_large, routes=app.router.routes
    )
    app.add_middleware(Observe, metrics=metrics)
    _add_error_handlers(app)
    for add in (
        _add_page_routes,
        _add_service_routes,
        _add_search_routes,
        _add_batch_route,
        _add_shop_routes,
        _add_image_routes,
        _add_cluster_routes,
        _add_report_routes,
    ):
        add(app, svc)
    return app


def _add_gauges(svc: Service) -> None:
    m = svc.metrics
    m.gauge_from("varsitysrch_catalogue_images", "Images in the catalogue.", lambda: len(svc.gen.ids))
    m.gauge_from("varsitysrch_clusters", "Clusters in the model.", lambda: svc.gen.k)
    m.gauge_from(
        "varsitysrch_model_generation", "Model generation served (1, +1 per reload).", lambda: svc.gen.number
    )
    m.queue_from("decode", lambda: svc.decode.depth)
    m.queue_from("embed", lambda: svc.gen.batcher.depth if svc.gen.batcher is not None else 0)


def check_port(port: Any) -> int:
    """A TCP port to listen on: an integer in [1, 65535]."""
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidArgumentError(f"port must be an integer in [1, 65535]; got {port!r}")
    return int(port)


def run_server(
    model_filename: str | os.PathLike[str],
    csv_file: str | os.PathLike[str] | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    **kw: Any,
) -> None:
    """Serve :func:`create_app` with uvicorn until interrupted.

    Keyword arguments named like :func:`create_app`'s go to it; the rest go to ``uvicorn.run``
    (``log_level``, ``access_log``, ``limit_concurrency``, ...).  One process: the model is
    loaded once and shared by the request threads (``workers`` cannot apply to an app object).
    """
    check_port(port)
    _import_fastapi()
    try:
        import uvicorn
    except ImportError as exc:
        raise missing("uvicorn", "serve", "the HTTP service") from exc
    app_kw = {k: kw.pop(k) for k in _APP_KEYS if k in kw}
    app = create_app(model_filename, csv_file, **app_kw)
    kw.setdefault("log_level", "info")
    uvicorn.run(app, host=host, port=port, **kw)
