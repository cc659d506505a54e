"""int8 vs float32 extractor: inference throughput, cosine to fp32, P@10 -- one run, side by side.

    python benchmarks/bench_int8.py --data DIR [--extractor efficientnet-lite0] [--threads 2]
                                    [--calibration DIR] [--full]         # DIR/clothing-small
    python benchmarks/bench_int8.py IMG_DIR [--full]                     # any folder, class = sub-folder

**Measures internals, not what users get**: the ONNX graphs and sessions are driven directly
(``varsitysrch._extractors``, ``_extract._iter_decoded``, ``_quantize``), with exact numpy
search.  What int8 costs a user, through the public pipeline with error bars, is
``python benchmarks/dev_domains.py --data DIR --variant "int8:quantized=true"``.

Data: ``IMG_DIR``, or ``clothing-small/`` under ``--data`` / ``$VARSITYSRCH_DATA``.

Throughput: the same decoded batches (32 images) through the fp32 graph and the static
int8 graph (QDQ, per-channel, stem and heads in float), alternating, best of
``--repeats`` rounds, ``--threads`` ONNX Runtime threads.  Quality: cosine of int8 to fp32
vectors on the timed images; with ``--full`` also exact leave-one-out P@10 / mAP@10 by
class (sub-folder) over every image, for int8 calibrated on the deterministic synthetic
set (the default) and on real photos (``--calibration DIR``, default ``examples/catalog``).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchdata

REPO = Path(__file__).resolve().parents[1]
PROG = "bench_int8.py"


def embed_all(sess: object, root: Path, ids: list[str], ex: object, output: str) -> Any:
    import numpy as np

    from varsitysrch._extract import _iter_decoded

    out = []
    for _, batch, bad in _iter_decoded(
        root,
        ids,
        batch_size=32,
        size=ex.input_size,
        resize=ex.resize,  # type: ignore[attr-defined]
        workers=2,
        prefetch=2,
    ):
        assert not bad, bad
        out.append(sess.run([output], {"images": batch})[0])  # type: ignore[attr-defined]
    return benchdata.normalize_rows(np.concatenate(out))


def loo_precision(X: Any, labels: Any, k: int = 10) -> tuple[float, float]:
    import numpy as np

    S = X @ X.T
    np.fill_diagonal(S, -np.inf)
    top = np.argsort(-S, axis=1)[:, :k]
    rel = labels[top] == labels[:, None]
    R = np.array([(labels == lab).sum() - 1 for lab in labels])
    prec = np.cumsum(rel, 1) / np.arange(1, k + 1)
    ap = (prec * rel).sum(1) / np.minimum(k, R)
    return float(rel.mean()), float(ap.mean())


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "img_dir", nargs="?", default=None, metavar="IMG_DIR", help="default: DATA/clothing-small"
    )
    benchdata.add_data_argument(ap, ["clothing-small"])
    ap.add_argument("--extractor", default="efficientnet-lite0")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--n", type=int, default=256, help="images timed")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--calibration", default=str(REPO / "examples" / "catalog"))
    ap.add_argument("--full", action="store_true", help="also P@10 over every image (a few minutes)")
    args = ap.parse_args(argv)
    root = benchdata.image_folder(PROG, args.img_dir, args.data)
    ids = benchdata.image_ids(root)
    if not ids:
        benchdata.fail(PROG, f"no images under {str(root)!r}")

    import numpy as np

    from varsitysrch import get_extractor
    from varsitysrch._extract import _iter_decoded
    from varsitysrch._extractors import _onnx_model_bytes, _session
    from varsitysrch._quantize import quantize_static_int8

    ex = get_extractor(args.extractor)
    exq = get_extractor(args.extractor, quantized=True)
    output = ex.pooling
    t0 = time.perf_counter()
    fp_bytes = _onnx_model_bytes(ex)
    q_bytes = _onnx_model_bytes(exq)  # synthetic calibration, cached after the first build
    print(
        f"models ready in {time.perf_counter() - t0:.1f}s: fp32 {len(fp_bytes) / 1e6:.1f} MB, "
        f"int8 {len(q_bytes) / 1e6:.1f} MB"
    )
    sess = {"fp32": _session(fp_bytes, args.threads), "int8": _session(q_bytes, args.threads)}
    timed = ids[:: max(1, len(ids) // args.n)][: args.n]
    batches = [
        b
        for _, b, _ in _iter_decoded(
            root, timed, batch_size=32, size=ex.input_size, resize=ex.resize, workers=2, prefetch=2
        )
    ]
    for s in sess.values():  # warm up
        s.run([output], {"images": batches[0]})
    best = {k: float("inf") for k in sess}
    for _ in range(args.repeats):
        for name, s in sess.items():
            t = time.perf_counter()
            for b in batches:
                s.run([output], {"images": b})
            best[name] = min(best[name], time.perf_counter() - t)
    n = sum(len(b) for b in batches)
    vec = {
        k: benchdata.normalize_rows(np.concatenate([s.run([output], {"images": b})[0] for b in batches]))
        for k, s in sess.items()
    }
    cos = (vec["fp32"] * vec["int8"]).sum(1)
    print(f"inference, batch 32, {args.threads} threads, {n} images, best of {args.repeats}:")
    for k in sess:
        print(f"  {k}: {n / best[k]:7.1f} img/s")
    print(f"  int8 / fp32 throughput: {best['fp32'] / best['int8']:.2f}x")
    print(f"  cosine int8 vs fp32: mean {cos.mean():.3f}, min {cos.min():.3f}")
    if not args.full:
        return
    labels = np.array([i.split("/", 1)[0] for i in ids])
    res = {}
    t = time.perf_counter()
    res["fp32"] = loo_precision(embed_all(sess["fp32"], root, ids, ex, output), labels)
    res["int8 (synthetic calibration)"] = loo_precision(
        embed_all(sess["int8"], root, ids, ex, output), labels
    )
    cal = Path(args.calibration)
    if cal.is_dir():
        q_real = quantize_static_int8(fp_bytes, ex, calibration=cal)
        res[f"int8 (calibrated on {len(benchdata.image_ids(cal))} photos of {cal.name})"] = loo_precision(
            embed_all(_session(q_real, args.threads), root, ids, ex, output), labels
        )
    print(f"exact leave-one-out over {len(ids)} images ({time.perf_counter() - t:.0f}s):")
    for k, (p, m) in res.items():
        print(f"  {k:45s} P@10 {p:.3f}  mAP@10 {m:.3f}  (P@10 {p - res['fp32'][0]:+.3f})")


if __name__ == "__main__":
    main()
