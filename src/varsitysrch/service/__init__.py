"""HTTP service and web page: search a catalogue from a browser or an app.

:func:`create_app` loads a model (and its extractor) and returns a FastAPI app;
:func:`run_server` serves it with uvicorn.  Both need the optional extra ``serve``
(``pip install 'varsitysrch[serve]'``).  The parts:

``app``         the endpoints, assembled by :func:`create_app`
``files``       image folder choice, id resolution, the upload format allow-list, thumbnails
``batching``    the bounded decode pool and the micro-batching embedder (503 when full)
``models``      the served model and its replacement without a restart
``metrics``     Prometheus metrics (prometheus-client, one registry per app)
``middleware``  request-body limit and request metrics
``static/``     the web page (plain HTML, JavaScript and CSS; nothing from a CDN)
"""

from .app import DEFAULT_MAX_UPLOAD, MAX_BATCH_QUERIES, MULTIPART_SLACK, create_app, run_server

__all__ = ["DEFAULT_MAX_UPLOAD", "MAX_BATCH_QUERIES", "MULTIPART_SLACK", "create_app", "run_server"]
