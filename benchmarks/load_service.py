"""Load test of the HTTP service: a benchmark, not a timed test.

    python benchmarks/load_service.py [--model M --csv C] [--requests 2000] [--concurrency 16]

Starts ``varsitysrch``'s server (uvicorn, in a subprocess) on 127.0.0.1 and a free port
(this script never targets another host), for the given model, or for a small model built
from ``examples/catalog`` when none is given.  Then sends ``--requests`` requests from
``--concurrency`` threads, mixing photo uploads (``POST /search`` with a file) and searches
by catalogue id (``GET /search?image_id=...``), within ``--max-seconds`` in all.  Prints
p50/p95/p99 latency, throughput and errors, per kind and overall; exits with status 1 if
any request failed (or the time bound cut the run short).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx2

REPO = Path(__file__).resolve().parents[1]
HOST = "127.0.0.1"  # on purpose not configurable
SERVER = """
import sys
from varsitysrch._service import run_server
model, csv, port, cache = sys.argv[1], sys.argv[2] or None, int(sys.argv[3]), sys.argv[4]
run_server(model, csv, host="127.0.0.1", port=port, cache_dir=cache, log_level="warning", access_log=False)
"""


@dataclass
class Result:
    kind: str
    seconds: float
    status: int  # 0: no response
    error: str = ""


def build_example_model(work: Path, k: int) -> tuple[Path, Path]:
    from varsitysrch import extract_features, train_clusters

    feats = work / "features"
    model, csv = work / "model.vsm", work / "clusters.csv"
    print(f"building a model of {REPO / 'examples' / 'catalog'} (k={k}) in {work} ...", flush=True)
    extract_features(REPO / "examples" / "catalog", feats, show_progress=False)
    train_clusters(feats, model, csv, k, show_progress=False)
    return model, csv


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def server(model: Path, csv: Path | None, cache: Path, startup_s: float) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-c", SERVER, str(model), str(csv or ""), str(port), str(cache)]
    proc = subprocess.Popen(cmd)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + startup_s
        while True:
            if proc.poll() is not None:
                raise SystemExit(f"the server exited with status {proc.returncode} during start-up")
            try:
                if httpx2.get(base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"the server did not answer /healthz within {startup_s:.0f} s")
            time.sleep(0.2)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def catalogue_ids(base: str) -> list[str]:
    c = httpx2.get(base + "/clusters", params={"sample": 0}, timeout=30).json()
    ids: list[str] = []
    for cl in c["clusters"]:
        offset: int | None = 0
        while offset is not None:
            page = httpx2.get(
                f"{base}/clusters/{cl['id']}", params={"offset": offset, "limit": 500}, timeout=30
            )
            body = page.json()
            ids += [m["image"] for m in body["members"]]
            offset = body["next_offset"]
    return ids


def upload_pool(images: Path, limit: int = 64) -> list[tuple[str, bytes]]:
    files = [REPO / "examples" / "query.jpg"]
    exts = {".jpg", ".jpeg", ".png", ".webp"}
    files += sorted(p for p in images.rglob("*") if p.suffix.lower() in exts)[: limit - 1]
    return [(p.name, p.read_bytes()) for p in files if p.is_file()]


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    i = min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))
    return s[i]


def report(name: str, rs: list[Result], wall: float) -> None:
    lat = [r.seconds * 1000 for r in rs]
    errs = sum(1 for r in rs if r.status != 200)
    print(
        f"  {name:<8} n={len(rs):>5}  errors={errs:<3} "
        f"p50={pct(lat, 50):7.1f} ms  p95={pct(lat, 95):7.1f} ms  p99={pct(lat, 99):7.1f} ms  "
        f"max={max(lat, default=float('nan')):7.1f} ms  {len(rs) / wall:6.1f} req/s"
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="model file (default: build one from examples/catalog)")
    ap.add_argument("--csv", type=Path, help="its assignments CSV")
    ap.add_argument("--images", type=Path, default=REPO / "examples" / "catalog", help="photos to upload")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--upload-share", type=float, default=0.5, help="share of requests that upload a photo")
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=600.0, help="bound on the whole run")
    ap.add_argument("--k", type=int, default=8, help="clusters of the model built from examples/catalog")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if args.requests < 1 or args.concurrency < 1 or not 0 <= args.upload_share <= 1:
        ap.error("--requests and --concurrency must be >= 1, --upload-share in [0, 1]")

    work = Path(tempfile.mkdtemp(prefix="vs-load-"))
    try:
        model, csv = args.model, args.csv
        if model is None:
            model, csv = build_example_model(work, args.k)
        uploads = upload_pool(args.images)
        t_start = time.monotonic()
        with server(model, csv, work / "thumbs", startup_s=180) as base:
            print(f"server up at {base} in {time.monotonic() - t_start:.1f} s", flush=True)
            ids = catalogue_ids(base)
            rng = random.Random(args.seed)
            plan = [
                ("upload", rng.randrange(len(uploads)))
                if rng.random() < args.upload_share
                else ("id", rng.randrange(len(ids)))
                for _ in range(args.requests)
            ]
            local = threading.local()
            clients: list[httpx2.Client] = []
            lock = threading.Lock()

            def client() -> httpx2.Client:
                c = getattr(local, "client", None)
                if c is None:
                    c = local.client = httpx2.Client(base_url=base, timeout=60)
                    with lock:
                        clients.append(c)
                return c

            deadline = time.monotonic() + args.max_seconds

            def one(job: tuple[str, int]) -> Result | None:
                if time.monotonic() > deadline:
                    return None
                kind, i = job
                t0 = time.perf_counter()
                try:
                    if kind == "upload":
                        name, data = uploads[i]
                        r = client().post(
                            "/search",
                            files={"image": (name, data, "image/jpeg")},
                            params={"top_n": args.top_n},
                        )
                    else:
                        r = client().get("/search", params={"image_id": ids[i], "top_n": args.top_n})
                    ok = r.status_code == 200 and len(r.json()["hits"]) == min(args.top_n, len(ids))
                    err = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
                    return Result(
                        kind, time.perf_counter() - t0, r.status_code if ok else -r.status_code, err
                    )
                except Exception as exc:  # a failed request is a result, not a crash of the benchmark
                    return Result(kind, time.perf_counter() - t0, 0, f"{type(exc).__name__}: {exc}")

            for j in plan[: min(8, len(plan))]:  # warm-up (not counted): thread pools, caches
                one(j)
            print(
                f"{args.requests} requests ({args.upload_share:.0%} uploads of {len(uploads)} photos, "
                f"the rest by id among {len(ids)}), concurrency {args.concurrency}, top_n {args.top_n} ...",
                flush=True,
            )
            t0 = time.perf_counter()
            with ThreadPoolExecutor(max_workers=args.concurrency) as pool:
                results = list(pool.map(one, plan))
            wall = time.perf_counter() - t0
            for c in clients:
                c.close()
            metrics = httpx2.get(base + "/metrics", timeout=10).text

        done = [r for r in results if r is not None]
        skipped = len(results) - len(done)
        errors = [r for r in done if r.status != 200]
        print(
            f"done in {wall:.1f} s: {len(done)} requests, {len(done) / wall:.1f} req/s, "
            f"{len(errors)} errors, {skipped} not sent (time bound)"
        )
        for kind in ("upload", "id"):
            report(kind, [r for r in done if r.kind == kind], wall)
        report("all", done, wall)
        server_errors = sum(
            float(line.rsplit(" ", 1)[1])
            for line in metrics.splitlines()
            if line.startswith("varsitysrch_http_errors_total{")
        )
        print(f"server /metrics: {server_errors:.0f} error responses")
        for r in errors[:5]:
            print(f"  error ({r.kind}): {r.error}")
        return 1 if errors or skipped else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
