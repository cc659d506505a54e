"""Load test of the HTTP service: micro-batching against per-request inference, in one run.

    python benchmarks/load_service.py [--model M --csv C] [--requests 64] [--concurrency 1,4,8,16]

A benchmark, not a timed test.  Starts ``varsitysrch``'s server (uvicorn, in a subprocess) on
127.0.0.1 and a free port (this script never targets another host) twice, for the same
model: once with ``max_batch=1`` (each upload runs its own batch-of-one inference, as before
micro-batching) and once with micro-batching (``--max-batch``, ``--window-ms``); both stay up, and each
concurrency level is run on one and then the other, so load drift hits both alike.  At each
level, ``--requests`` photo uploads (``POST /search``; ``--id-share`` of them
replaced by searches by catalogue id) are sent from that many threads.  Prints uploads/s and
p50/p95 latency per configuration and level, the speed-up over one client, the speed-up of
micro-batching over per-request inference, and the mean batch size the server saw.  Exits
with status 1 if any request failed or the ``--max-seconds`` bound cut the run short.

Data: the shipped ``examples/catalog`` (no path needed): with no ``--model``, a small model is
built from it in a temp folder, and its photos are the uploads (``--images``).  Public names only
(``extract_features``, ``train_clusters``, ``varsitysrch.service.run_server``, HTTP).
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
from varsitysrch.service import run_server
model, csv, port, cache, max_batch, window = sys.argv[1:7]
run_server(model, csv or None, host="127.0.0.1", port=int(port), cache_dir=cache, log_level="warning",
           access_log=False, max_batch=int(max_batch), batch_window_ms=float(window), queue_limit=64,
           reload_interval=0)
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
def server(
    model: Path, csv: Path | None, cache: Path, max_batch: int, window_ms: float, startup_s: float
) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-c", SERVER, str(model), str(csv or ""), str(port), str(cache)]
    proc = subprocess.Popen([*cmd, str(max_batch), str(window_ms)])
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


def metric_sum(text: str, name: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name + " "))


def run_level(
    base: str,
    plan: list[tuple[str, int]],
    uploads: list[tuple[str, bytes]],
    ids: list[str],
    concurrency: int,
    top_n: int,
    deadline: float,
) -> tuple[list[Result | None], float]:
    local = threading.local()
    clients: list[httpx2.Client] = []
    lock = threading.Lock()

    def client() -> httpx2.Client:
        c = getattr(local, "client", None)
        if c is None:
            c = local.client = httpx2.Client(base_url=base, timeout=120)
            with lock:
                clients.append(c)
        return c

    def one(job: tuple[str, int]) -> Result | None:
        if time.monotonic() > deadline:
            return None
        kind, i = job
        t0 = time.perf_counter()
        try:
            if kind == "upload":
                name, data = uploads[i]
                r = client().post(
                    "/search", files={"image": (name, data, "image/jpeg")}, params={"top_n": top_n}
                )
            else:
                r = client().get("/search", params={"image_id": ids[i], "top_n": top_n})
            ok = r.status_code == 200 and len(r.json()["hits"]) == min(top_n, len(ids))
            err = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
            return Result(kind, time.perf_counter() - t0, r.status_code if ok else -r.status_code, err)
        except Exception as exc:  # a failed request is a result, not a crash of the benchmark
            return Result(kind, time.perf_counter() - t0, 0, f"{type(exc).__name__}: {exc}")

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        for j in plan[:concurrency]:  # warm-up (not counted): connections, thread pools
            pool.submit(one, j)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(one, plan))
    wall = time.perf_counter() - t0
    for c in clients:
        c.close()
    return results, wall


def main() -> int:
    ap = argparse.ArgumentParser(
        prog="load_service.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", type=Path, help="model file (default: build one from examples/catalog)")
    ap.add_argument("--csv", type=Path, help="its assignments CSV")
    ap.add_argument("--images", type=Path, default=REPO / "examples" / "catalog", help="photos to upload")
    ap.add_argument("--requests", type=int, default=64, help="requests per configuration and level")
    ap.add_argument("--concurrency", default="1,4,8,16", help="comma-separated client counts")
    ap.add_argument("--id-share", type=float, default=0.0, help="share of searches by id instead of uploads")
    ap.add_argument("--max-batch", type=int, default=8, help="micro-batching: largest batch")
    ap.add_argument("--window-ms", type=float, default=5.0, help="micro-batching: time window")
    ap.add_argument("--top-n", type=int, default=10)
    ap.add_argument("--max-seconds", type=float, default=900.0, help="bound on the whole run")
    ap.add_argument("--k", type=int, default=8, help="clusters of the model built from examples/catalog")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    levels = [int(x) for x in args.concurrency.split(",") if x.strip()]
    if args.requests < 1 or not levels or min(levels) < 1 or not 0 <= args.id_share <= 1:
        ap.error("--requests and every --concurrency must be >= 1, --id-share in [0, 1]")

    work = Path(tempfile.mkdtemp(prefix="vs-load-"))
    deadline = time.monotonic() + args.max_seconds
    try:
        model, csv = args.model, args.csv
        if model is None:
            model, csv = build_example_model(work, args.k)
        uploads = upload_pool(args.images)
        configs = [("per-request", 1, 0.0), (f"batch<={args.max_batch}", args.max_batch, args.window_ms)]
        rates: dict[tuple[str, int], float] = {}
        failed = skipped = 0
        print(
            f"{args.requests} requests per level ({1 - args.id_share:.0%} uploads of {len(uploads)} photos), "
            f"top_n {args.top_n}, micro-batching window {args.window_ms} ms; client and server share this "
            f"machine ({os.cpu_count()} cores)",
            flush=True,
        )
        print(f"{'config':<12} {'clients':>7} {'uploads/s':>10} {'p50 ms':>8} {'p95 ms':>8} {'errors':>6}")
        with contextlib.ExitStack() as stack:  # both servers up; the idle one costs no CPU
            bases = {
                name: stack.enter_context(server(model, csv, work / "thumbs", mb, window, startup_s=180))
                for name, mb, window in configs
            }
            ids = catalogue_ids(next(iter(bases.values())))
            rng = random.Random(args.seed)
            for c in levels:  # each level for both configurations back to back: drift hits both alike
                plan = [
                    ("id", rng.randrange(len(ids)))
                    if rng.random() < args.id_share
                    else ("upload", rng.randrange(len(uploads)))
                    for _ in range(args.requests)
                ]
                for name, _, _ in configs:
                    results, wall = run_level(bases[name], plan, uploads, ids, c, args.top_n, deadline)
                    done = [r for r in results if r is not None]
                    skipped += len(results) - len(done)
                    errors = [r for r in done if r.status != 200]
                    failed += len(errors)
                    lat = [r.seconds * 1000 for r in done if r.kind == "upload"]
                    rate = len(lat) / wall
                    rates[(name, c)] = rate
                    print(
                        f"{name:<12} {c:>7} {rate:>10.1f} {pct(lat, 50):>8.0f} {pct(lat, 95):>8.0f} "
                        f"{len(errors):>6}",
                        flush=True,
                    )
                    for r in errors[:3]:
                        print(f"    error ({r.kind}): {r.error}")
            for name, _, _ in configs:
                text = httpx2.get(bases[name] + "/metrics", timeout=10).text
                n = metric_sum(text, "varsitysrch_embed_batch_size_count")
                s = metric_sum(text, "varsitysrch_embed_batch_size_sum")
                print(f"{name:<12} mean batch size seen by the server: {s / max(n, 1):.2f} ({n:.0f} batches)")
        base_rate = {name: rates.get((name, levels[0]), float("nan")) for name, _, _ in configs}
        print(f"\nspeed-up over {levels[0]} client(s), uploads/s:")
        for name, _, _ in configs:
            cells = "  ".join(f"{c}: {rates[(name, c)] / base_rate[name]:.2f}x" for c in levels)
            print(f"  {name:<12} {cells}")
        per, mb = configs[0][0], configs[1][0]
        cells = "  ".join(f"{c}: {rates[(mb, c)] / rates[(per, c)]:.2f}x" for c in levels)
        print(f"micro-batching over per-request inference, same clients: {cells}")
        if skipped:
            print(f"{skipped} requests not sent (--max-seconds)")
        return 1 if failed or skipped else 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
