"""The HTTP service (FastAPI TestClient): every endpoint, limits, path safety, concurrency, metrics."""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("fastapi")
pytest.importorskip("python_multipart")
pytest.importorskip("httpx2")

from fastapi.testclient import TestClient
from PIL import Image

from imagegen import make_bomb_png, make_truncated_jpeg
from varsitysrch import InvalidArgumentError, MissingDependencyError
from varsitysrch.service import MULTIPART_SLACK, create_app

MAX_UPLOAD = 64 * 1024
THUMB = 48


# --------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def service_app(
    synth_model: tuple[Path, Path],
    synth_catalogue: tuple[Path, dict[str, str]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Path]]:
    model, csv = synth_model
    cache = tmp_path_factory.mktemp("thumbs")
    app = create_app(
        model, csv, image_root=synth_catalogue[0], max_upload_bytes=MAX_UPLOAD, thumb_size=THUMB, cache_dir=cache
    )
    yield app, cache


@pytest.fixture(scope="session")
def client(service_app: tuple[Any, Path]) -> Iterator[TestClient]:
    with TestClient(service_app[0]) as c:
        yield c


@pytest.fixture(scope="session")
def catalogue(synth_catalogue: tuple[Path, dict[str, str]]) -> tuple[Path, dict[str, str]]:
    return synth_catalogue


def upload(client: TestClient, data: bytes, name: str = "q.png", **params: Any) -> Any:
    return client.post("/search", files={"image": (name, data, "application/octet-stream")}, params=params)


def parse_metrics(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Parse the Prometheus text format strictly enough to catch malformed output."""
    sample = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
    label = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')
    types: dict[str, str] = {}
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ", 3)
            assert kind in ("counter", "gauge", "histogram"), line
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = sample.match(line)
        assert m, f"bad metrics line: {line!r}"
        name, labels, value = m.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in types or base in types, f"sample without TYPE: {line!r}"
        pairs = frozenset(label.findall(labels or ""))
        key = (name, pairs)
        assert key not in out, f"duplicate sample {line!r}"
        out[key] = float(value)
    return out


def metric(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


# --------------------------------------------------------------------------- basics
def test_healthz(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    r = client.get("/healthz")
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "ok"
    assert body["images"] == len(catalogue[1])
    assert body["clusters"] == 4
    assert body["search_by_image"] is True
    assert body["max_upload_bytes"] == MAX_UPLOAD
    assert r.headers["x-content-type-options"] == "nosniff"


def test_page_and_static_files(client: TestClient) -> None:
    r = client.get("/")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert "default-src 'self'" in r.headers["content-security-policy"]
    html = r.text
    assert 'id="file"' in html and "static/app.js" in html and "static/style.css" in html
    assert "http://" not in html and "https://" not in html  # offline: nothing from a CDN
    for name, ctype in (("app.js", "text/javascript"), ("style.css", "text/css")):
        r = client.get(f"/static/{name}")
        assert r.status_code == 200 and r.headers["content-type"].startswith(ctype)
        assert "https://" not in r.text and "http://" not in r.text
    assert client.get("/static/nope.js").status_code == 404
    assert client.get("/static/..%2F_service.py").status_code == 404


def test_openapi_and_docs(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    for path in (
        "/search",
        "/images/{image_id}",
        "/thumbnails/{image_id}",
        "/clusters",
        "/clusters/{cluster_id}",
        "/healthz",
        "/metrics",
    ):
        assert any(p.startswith(path.split("{")[0]) for p in spec["paths"]), path
    assert set(spec["paths"]["/search"]) == {"get", "post"}
    r = client.get("/docs")
    assert r.status_code == 200 and "openapi.json" in r.text


def test_unknown_route_is_404(client: TestClient) -> None:
    r = client.get("/no/such/route")
    assert r.status_code == 404
    assert "detail" in r.json()


# --------------------------------------------------------------------------- search
def test_search_by_upload(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    root, labels = catalogue
    query = "green_checker/img_02.png"
    r = upload(client, (root / query).read_bytes(), "query.png", top_n=5)
    assert r.status_code == 200, r.text
    body = r.json()
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4, 5]
    assert hits[0]["image"] == query and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    assert sum(labels[h["image"]] == "green_checker" for h in hits) >= 4
    assert hits[0]["url"] == f"/images/{query}"
    assert hits[0]["thumbnail_url"] == f"/thumbnails/{query}"
    assert set(hits[0]) == {"image", "score", "cluster", "rank", "url", "thumbnail_url"}
    assert body["query"]["kind"] == "upload" and body["query"]["filename"] == "query.png"
    assert body["top_n"] == 5 and body["exact"] is False and body["nprobe"] >= 1


def test_search_parameters_as_form_fields(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    root, _ = catalogue
    data = (root / "red_circles/img_01.jpg").read_bytes()
    r = client.post(
        "/search", files={"image": ("q.jpg", data, "image/jpeg")}, data={"top_n": "3", "exact": "true"}
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["hits"]) == 3 and body["exact"] is True and body["nprobe"] is None
    r2 = upload(client, data, "q.jpg", top_n=3, nprobe=1)
    assert r2.status_code == 200 and r2.json()["nprobe"] == 1
    assert r2.json()["hits"][0]["image"] == body["hits"][0]["image"] == "red_circles/img_01.jpg"


def test_search_by_id(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    _, labels = catalogue
    qid = "blue_stripes/img_03.jpg"
    r = client.get("/search", params={"image_id": qid, "top_n": 4})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["query"]["kind"] == "image_id" and body["query"]["image_id"] == qid
    assert body["query"]["thumbnail_url"] == f"/thumbnails/{qid}"
    hits = body["hits"]
    assert len(hits) == 4 and hits[0]["image"] == qid and hits[0]["score"] == pytest.approx(1.0, abs=1e-3)
    assert all(labels[h["image"]] == "blue_stripes" for h in hits)
    # the same through POST (form field), and without the query image itself
    r2 = client.post("/search", data={"image_id": qid, "top_n": "4"})
    assert r2.status_code == 200 and r2.json()["hits"] == hits
    r3 = client.get("/search", params={"image_id": qid, "top_n": 4, "include_self": "false"})
    others = [h["image"] for h in r3.json()["hits"]]
    assert len(others) == 4 and qid not in others
    assert others[:3] == [h["image"] for h in hits[1:]]


def test_search_errors(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    root, _ = catalogue
    png = (root / "red_circles/img_00.png").read_bytes()
    r = client.get("/search", params={"image_id": "no/such.jpg"})
    assert r.status_code == 404 and "not in the catalogue" in r.json()["detail"]
    assert client.post("/search", data={"image_id": "nope.png"}).status_code == 404
    r = client.post("/search")
    assert r.status_code == 422 and "image" in r.json()["detail"]
    r = client.post(
        "/search", files={"image": ("q.png", png, "image/png")}, data={"image_id": "red_circles/img_00.png"}
    )
    assert r.status_code == 422 and "not both" in r.json()["detail"]
    assert client.get("/search").status_code == 422  # image_id required
    for bad in ({"top_n": 0}, {"top_n": -3}, {"top_n": "abc"}, {"top_n": 10**6}, {"nprobe": 0}):
        r = client.get("/search", params={"image_id": "red_circles/img_00.png", **bad})
        assert r.status_code == 422, bad
        assert "detail" in r.json()
    r = client.get("/search", params={"image_id": "red_circles/img_00.png", "nprobe": 99})
    assert r.status_code == 422 and "nprobe" in r.json()["detail"]
    r = upload(client, png, nprobe=99)
    assert r.status_code == 422


# --------------------------------------------------------------------------- upload limits
def test_oversize_upload_is_413(client: TestClient) -> None:
    # by Content-Length, before the body is read
    r = upload(client, b"\xff" * (MAX_UPLOAD + MULTIPART_SLACK + 1), "big.jpg")
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # a file just over the limit (the body is within the multipart slack): the endpoint checks it
    r = upload(client, b"\xff" * (MAX_UPLOAD + 1), "big.jpg")
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    # exactly at the limit is accepted as far as size goes (it is not an image, hence 415)
    assert upload(client, b"\xff" * MAX_UPLOAD, "max.jpg").status_code == 415


def test_oversize_streamed_upload_is_413(client: TestClient) -> None:
    """Chunked upload (no Content-Length): the body is counted while it streams."""
    boundary = "vsboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="big.jpg"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()

    def body() -> Iterator[bytes]:
        yield head
        for _ in range((MAX_UPLOAD + MULTIPART_SLACK) // 8192 + 4):
            yield b"\xff" * 8192
        yield tail

    r = client.post(
        "/search", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert r.status_code == 413 and "too large" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


def test_not_an_image_is_415(client: TestClient) -> None:
    r = upload(client, b"These are not pixels.\n" * 20, "notes.txt")
    assert r.status_code == 415
    detail = r.json()["detail"]
    assert "not an image" in detail and "notes.txt" in detail
    r = client.post("/search", files={"image": ("page.html", b"<html><body>hi</body></html>", "text/html")})
    assert r.status_code == 415


def test_broken_images_are_422(client: TestClient, tmp_path: Path) -> None:
    r = upload(client, b"", "empty.jpg")
    assert r.status_code == 422 and "empty" in r.json()["detail"]
    trunc = make_truncated_jpeg(tmp_path / "t.jpg", keep=0.3).read_bytes()
    r = upload(client, trunc, "t.jpg")
    assert r.status_code == 422 and "cannot" in r.json()["detail"]


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_is_refused(client: TestClient, tmp_path: Path) -> None:
    bomb = make_bomb_png(tmp_path / "bomb.png").read_bytes()
    assert len(bomb) < MAX_UPLOAD  # small file, huge image
    r = upload(client, bomb, "bomb.png")
    assert r.status_code == 422
    assert "bomb" in r.json()["detail"]
    # a bomb just over varsitysrch's pixel limit but under Pillow's hard one is refused as well
    bomb2 = make_bomb_png(tmp_path / "bomb2.png", size=(10000, 9000)).read_bytes()
    r = upload(client, bomb2, "bomb2.png")
    assert r.status_code == 422 and "bomb" in r.json()["detail"]
    assert client.get("/healthz").status_code == 200


# --------------------------------------------------------------------------- images and thumbnails
def test_images_are_served(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    root, labels = catalogue
    for rel in list(labels)[:6]:
        r = client.get(f"/images/{rel}")
        assert r.status_code == 200
        assert r.content == (root / rel).read_bytes()
        assert r.headers["content-type"] == ("image/png" if rel.endswith(".png") else "image/jpeg")
        assert r.headers["x-content-type-options"] == "nosniff"


TRAVERSALS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%2F..%2F..%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "red_circles%2F..%2F..%2F..%2Fetc%2Fpasswd",
    "red_circles/%2E%2E/%2E%2E/%2E%2E/etc/passwd",
    "..%5C..%5Cetc%5Cpasswd",
    "red_circles/img_00.png%00.txt",
    "red_circles",
    "",
]


@pytest.mark.parametrize("prefix", ["/images/", "/thumbnails/"])
@pytest.mark.parametrize("attempt", TRAVERSALS)
def test_path_traversal_is_refused(client: TestClient, prefix: str, attempt: str) -> None:
    r = client.get(prefix + attempt)
    assert r.status_code == 404
    assert b"root:" not in r.content


def test_symlink_escape_is_refused(
    synth_model: tuple[Path, Path], catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = catalogue
    copy = tmp_path / "catalogue"
    shutil.copytree(root, copy)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.png"
    Image.new("RGB", (20, 20), (1, 2, 3)).save(secret)
    escaped = "red_circles/img_00.png"  # a catalogue id, now a link out of the image folder
    (copy / escaped).unlink()
    os.symlink(secret, copy / escaped)
    inside = "red_circles/img_02.png"  # a link to another file inside the folder is fine
    (copy / inside).unlink()
    os.symlink(copy / "red_circles/img_04.png", copy / inside)
    dir_link = "blue_stripes"  # a whole directory linked out of the folder
    shutil.copytree(copy / dir_link, outside / dir_link)
    shutil.rmtree(copy / dir_link)
    os.symlink(outside / dir_link, copy / dir_link)

    model, csv = synth_model
    app = create_app(model, csv, image_root=copy, cache_dir=tmp_path / "thumbs", thumb_size=THUMB)
    with TestClient(app) as c:
        for prefix in ("/images/", "/thumbnails/"):
            r = c.get(prefix + escaped)
            assert r.status_code == 404, prefix
            assert r.content != secret.read_bytes()
            assert c.get(prefix + "blue_stripes/img_00.png").status_code == 404
            assert c.get(prefix + inside).status_code == 200
            assert c.get(prefix + "red_circles/img_01.jpg").status_code == 200
        assert c.get("/images/" + inside).content == (copy / "red_circles/img_04.png").read_bytes()
    assert not list((tmp_path / "thumbs").rglob("*.tmp"))


def test_thumbnails_are_resized_and_cached(
    client: TestClient, service_app: tuple[Any, Path], catalogue: tuple[Path, dict[str, str]]
) -> None:
    _, cache = service_app
    rel = "yellow_triangles/img_05.jpg"
    before = {p for p in cache.rglob("*.jpg")}
    r = client.get(f"/thumbnails/{rel}")
    assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
    im = Image.open(io.BytesIO(r.content))
    assert im.format == "JPEG" and im.size == (THUMB, THUMB)
    new = {p for p in cache.rglob("*.jpg")} - before
    assert len(new) == 1
    cached = new.pop()
    assert cached.read_bytes() == r.content
    assert not list(cache.rglob("*.tmp"))
    hits0 = metric(parse_metrics(client.get("/metrics").text), "varsitysrch_thumbnails_total", result="hit")
    r2 = client.get(f"/thumbnails/{rel}")
    assert r2.status_code == 200 and r2.content == r.content
    hits1 = metric(parse_metrics(client.get("/metrics").text), "varsitysrch_thumbnails_total", result="hit")
    assert hits1 == hits0 + 1


def test_thumbnail_cache_follows_source_mtime(
    synth_model: tuple[Path, Path], catalogue: tuple[Path, dict[str, str]], tmp_path: Path
) -> None:
    root, _ = catalogue
    copy = tmp_path / "catalogue"
    shutil.copytree(root, copy)
    model, csv = synth_model
    cache = tmp_path / "thumbs"
    app = create_app(model, csv, image_root=copy, cache_dir=cache, thumb_size=THUMB)
    rel = "red_circles/img_00.png"
    with TestClient(app) as c:
        first = c.get(f"/thumbnails/{rel}").content
        Image.new("RGB", (60, 30), (0, 0, 255)).save(copy / rel)  # the image changes
        st = (copy / rel).stat()
        os.utime(copy / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        second = c.get(f"/thumbnails/{rel}")
        assert second.status_code == 200 and second.content != first
        thumb = np.asarray(Image.open(io.BytesIO(second.content)).convert("RGB"), np.float32)
        assert thumb.shape == (THUMB, THUMB, 3)
        # the 60x30 blue image, letterboxed: blue in the middle rows, white above and below
        assert thumb[THUMB // 2, THUMB // 2, 2] > 200 and thumb[THUMB // 2, THUMB // 2, 0] < 60
        assert thumb[2, THUMB // 2].min() > 230 and thumb[-3, THUMB // 2].min() > 230
    assert len(list(cache.rglob("*.jpg"))) == 2


# --------------------------------------------------------------------------- clusters
def test_clusters(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    _, labels = catalogue
    r = client.get("/clusters", params={"sample": 2})
    assert r.status_code == 200
    body = r.json()
    assert body["k"] == 4 and body["images"] == len(labels)
    assert [c["id"] for c in body["clusters"]] == [0, 1, 2, 3]
    assert sum(c["size"] for c in body["clusters"]) == len(labels)
    seen: list[str] = []
    for c in body["clusters"]:
        assert len(c["sample"]) == min(2, c["size"])
        members: list[str] = []
        offset: int | None = 0
        while offset is not None:
            page = client.get(f"/clusters/{c['id']}", params={"offset": offset, "limit": 4}).json()
            assert page["size"] == c["size"] and len(page["members"]) <= 4
            assert page["prev_offset"] == (None if offset == 0 else max(0, offset - 4))
            members += [m["image"] for m in page["members"]]
            assert all(m["thumbnail_url"] == f"/thumbnails/{m['image']}" for m in page["members"])
            offset = page["next_offset"]
        assert len(members) == c["size"]
        assert members[:2] == [m["image"] for m in c["sample"]]
        seen += members
    assert sorted(seen) == sorted(labels)
    beyond = client.get("/clusters/0", params={"offset": 1000}).json()
    assert beyond["members"] == [] and beyond["next_offset"] is None


def test_cluster_errors(client: TestClient) -> None:
    assert client.get("/clusters/4").status_code == 404
    assert client.get("/clusters/-1").status_code == 404
    assert client.get("/clusters/abc").status_code == 422
    assert client.get("/clusters/0", params={"limit": 0}).status_code == 422
    assert client.get("/clusters/0", params={"limit": 100000}).status_code == 422
    assert client.get("/clusters/0", params={"offset": -1}).status_code == 422


# --------------------------------------------------------------------------- concurrency
def test_concurrent_requests_match_sequential(
    service_app: tuple[Any, Path], catalogue: tuple[Path, dict[str, str]]
) -> None:
    root, labels = catalogue
    ids = sorted(labels)
    jobs: list[tuple[str, Any]] = []
    for i, rel in enumerate(ids):
        jobs.append(("upload", (root / rel).read_bytes()) if i % 2 == 0 else ("id", rel))
    jobs = jobs * 2

    def run(c: TestClient, job: tuple[str, Any]) -> list[tuple[str, float, int]]:
        kind, arg = job
        if kind == "upload":
            r = c.post("/search", files={"image": ("q", arg, "image/png")}, params={"top_n": 5})
        else:
            r = c.get("/search", params={"image_id": arg, "top_n": 5})
        assert r.status_code == 200, r.text
        return [(h["image"], h["score"], h["cluster"]) for h in r.json()["hits"]]

    with TestClient(service_app[0]) as c:
        sequential = [run(c, j) for j in jobs]
        with ThreadPoolExecutor(max_workers=8) as pool:
            concurrent = list(pool.map(lambda j: run(c, j), jobs))
    for seq, con in zip(sequential, concurrent, strict=True):
        assert [h[0] for h in seq] == [h[0] for h in con]
        assert [h[2] for h in seq] == [h[2] for h in con]
        assert [h[1] for h in seq] == pytest.approx([h[1] for h in con], abs=1e-5)


# --------------------------------------------------------------------------- metrics
def test_metrics(client: TestClient, catalogue: tuple[Path, dict[str, str]]) -> None:
    before = parse_metrics(client.get("/metrics").text)
    for _ in range(3):
        assert client.get("/healthz").status_code == 200
    assert client.get("/clusters/999").status_code == 404
    assert client.get("/no-such-page").status_code == 404
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    after = parse_metrics(r.text)
    req = "varsitysrch_http_requests_total"
    ok = {"method": "GET", "route": "/healthz", "status": "200"}
    assert metric(after, req, **ok) == metric(before, req, **ok) + 3
    nf = {"route": "/clusters/{cluster_id}", "status": "404"}
    assert metric(after, req, **nf) == metric(before, req, **nf) + 1
    assert (
        metric(after, "varsitysrch_http_errors_total", **nf)
        == metric(before, "varsitysrch_http_errors_total", **nf) + 1
    )
    assert metric(after, req, route="<unmatched>", status="404") >= 1
    # histogram: cumulative buckets, +Inf bucket == count, one count per request
    h = "varsitysrch_http_request_duration_seconds"
    buckets = sorted(
        (
            (float(dict(ls)["le"]), v)
            for (n, ls), v in after.items()
            if n == h + "_bucket" and ok.items() <= ls
        ),
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts) and buckets[-1][0] == float("inf")
    assert buckets[-1][1] == metric(after, h + "_count", **ok) == metric(after, req, **ok)
    assert metric(after, h + "_sum", **ok) > 0
    assert metric(after, "varsitysrch_catalogue_images") == len(catalogue[1])
    assert metric(after, "varsitysrch_http_requests_in_flight") == 1  # this request


def test_internal_errors_do_not_crash_the_server(
    service_app: tuple[Any, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = service_app[0]

    def boom(*a: Any, **k: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state.searcher, "search_id", boom)
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.get("/search", params={"image_id": "red_circles/img_00.png"})
        assert r.status_code == 500 and r.json() == {"detail": "internal server error"}
        assert c.get("/healthz").status_code == 200
        text = c.get("/metrics").text
    assert 'route="/search",status="500"' in text


# --------------------------------------------------------------------------- construction
def test_create_app_validates_arguments(synth_model: tuple[Path, Path]) -> None:
    model, csv = synth_model
    with pytest.raises(InvalidArgumentError, match="max_upload_bytes"):
        create_app(model, csv, max_upload_bytes=0)
    with pytest.raises(InvalidArgumentError, match="thumb_size"):
        create_app(model, csv, thumb_size=5)


def test_missing_fastapi_names_the_extra(
    synth_model: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)
    with pytest.raises(MissingDependencyError, match=r"varsitysrch\[serve\]"):
        create_app(*synth_model)
