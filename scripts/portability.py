"""Does this CPU embed like every other? The figures behind docs/portability.md, for this machine.

    python scripts/portability.py                                  # reference agreement only
    python scripts/portability.py --images ../shared/data/clothing-small --n 200   # + int8 vs fp32, speed

Prints, for the CPU it runs on (its instruction-set flags first):

1. the default extractor (fp32) run by onnxruntime against ``tests/data/reference`` (the same
   graph evaluated by ``onnx.reference``, no CPU-specific kernels): cosine min / mean;
2. the opt-in int8 graph (7-bit weights) and the earlier full-range int8 graph, each against
   ``onnx.reference`` evaluating that same int8 graph, on the same inputs;
3. with ``--images``: int8 vs fp32 embeddings of ``--n`` photos (cosine min / mean, top-10
   neighbour overlap) and the forward rate of both graphs (batch 32), measured alternately in one run.

Internals on purpose: the ONNX graph bytes and sessions (``varsitysrch._extractors``) and the int8
quantizer (``_quantize``) are driven directly, to compare graphs on the same inputs.

Under Debian's qemu-user the same script exercises other kernels, e.g.
``qemu-x86_64 -cpu Nehalem .venv/bin/python scripts/portability.py`` (SSE4 only, no AVX).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))


def cpu_flags() -> str:
    """The instruction sets the CPU reports through CPUID (numpy's detection: under qemu-user, the
    emulated CPU's, where /proc/cpuinfo would show the host's)."""
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as feats
    except ImportError:  # pragma: no cover - numpy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as feats
    keep = ("SSE42", "AVX", "AVX2", "FMA3", "AVX512F", "AVX512_SKX", "AVX512_CLX", "AVX512_SPR")
    have = [f for f in keep if feats.get(f)]
    return (
        " ".join(have) + " (AVX512_CLX: VNNI; AVX512_SPR: AMX era)" if have else "none of " + ", ".join(keep)
    )


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def quantize(fp32: bytes, ex: object, full_range: bool) -> bytes:
    """The int8 graph of this version, or (``full_range``) the earlier CPU-dependent one."""
    from varsitysrch import _quantize

    if not full_range:
        return _quantize.quantize_static_int8(fp32, ex)  # type: ignore[arg-type]
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    model = onnx.load_from_string(fp32)
    exclude = _quantize._float_nodes(model)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "a.onnx", Path(tmp) / "b.onnx"
        onnx.save(model, str(src))
        quantize_static(
            str(src), str(dst), _quantize._Reader(_quantize._calibration_batch(None, ex, 256)),  # type: ignore[arg-type]
            quant_format=QuantFormat.QDQ, per_channel=True, activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8, nodes_to_exclude=exclude, calibrate_method=CalibrationMethod.MinMax,
        )  # fmt: skip
        return dst.read_bytes()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=Path, help="a folder of photos (int8 vs fp32 and speed)")
    ap.add_argument("--n", type=int, default=200, help="photos used from --images")
    ap.add_argument("--repeats", type=int, default=3, help="alternating speed rounds")
    args = ap.parse_args(argv)
    if args.images is not None and not args.images.is_dir():
        sys.exit(f"--images {str(args.images)!r} is not a folder")

    from make_reference_embeddings import reference_pooled
    from PIL import Image

    from varsitysrch import get_extractor
    from varsitysrch._extractors import _onnx_model_bytes, _run, _session

    print(f"CPU flags: {cpu_flags()}")
    ref_dir = REPO / "tests" / "data" / "reference"
    meta = json.loads((ref_dir / "reference.json").read_text(encoding="utf-8"))
    inputs = np.stack([np.asarray(Image.open(ref_dir / p["input"]).convert("RGB")) for p in meta["photos"]])
    ex = get_extractor()
    fp32 = _onnx_model_bytes(ex)
    s32 = _session(fp32, 2)
    c = cos(_run(s32, inputs, "pooled"), np.load(ref_dir / "pooled.npy"))
    print(f"fp32 default, onnxruntime vs onnx.reference: cosine min {c.min():.6f} mean {c.mean():.6f}")
    ex8 = get_extractor(quantized=True)
    graphs = {
        "int8 7-bit (opt-in)": quantize(fp32, ex8, False),
        "int8 full-range (old)": quantize(fp32, ex8, True),
    }
    for name, g in graphs.items():
        c = cos(_run(_session(g, 2), inputs, "pooled"), reference_pooled(g, inputs))
        print(f"{name}, onnxruntime vs onnx.reference: cosine min {c.min():.6f} mean {c.mean():.6f}")
    if args.images is None:
        return 0

    from varsitysrch._images import list_images, load_image

    ids = list_images(args.images)
    ids = [ids[int(j)] for j in np.linspace(0, len(ids) - 1, min(args.n, len(ids)))]
    batch = np.stack([load_image(args.images / i, ex.input_size, ex.resize) for i in ids])
    sessions = {"fp32": s32, **{k: _session(g, 2) for k, g in graphs.items()}}
    emb = {
        k: np.concatenate([_run(s, batch[i : i + 32], "pooled") for i in range(0, len(batch), 32)])
        for k, s in sessions.items()
    }

    def top10(x: np.ndarray) -> np.ndarray:
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        s = x @ x.T
        np.fill_diagonal(s, -2)
        return np.argsort(-s, axis=1)[:, :10]

    t32 = top10(emb["fp32"])
    for k in graphs:
        c = cos(emb[k], emb["fp32"])
        tk = top10(emb[k])
        overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(tk, t32, strict=True)])
        print(
            f"{k} vs fp32 on {len(ids)} photos: cosine min {c.min():.3f} mean {c.mean():.3f}, "
            f"top-10 overlap {overlap:.3f}"
        )
    rate: dict[str, list[float]] = {k: [] for k in sessions}
    x = batch[:32]
    for s in sessions.values():
        _run(s, x, "pooled")  # warm up
    for _ in range(args.repeats):
        for k, s in sessions.items():
            t = time.perf_counter()
            _run(s, x, "pooled")
            rate[k].append(len(x) / (time.perf_counter() - t))
    med = {k: float(np.median(v)) for k, v in rate.items()}
    for k in sessions:
        print(f"forward {k}: {med[k]:.1f} images/s (batch 32, 2 threads), {med[k] / med['fp32']:.2f}x fp32")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
