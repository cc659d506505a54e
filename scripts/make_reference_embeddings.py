"""Write the CPU-independent reference embeddings that ``tests/test_portable.py`` checks against.

For a few shipped sample photos (``examples/catalog``, CC0) this script

1. decodes each photo the way the default extractor does (``load_image`` at its input size and
   resize mode) and saves the fitted ``uint8`` input as a lossless PNG,
2. builds the default extractor's ONNX graph and evaluates it with ``onnx.reference.
   ReferenceEvaluator`` -- plain numpy, no onnxruntime kernels, so no instruction-set-specific
   code path -- and saves the unit-normalised ``pooled`` output.

Internals on purpose: the graph's bytes come from ``varsitysrch._extractors._onnx_model_bytes``
(no public function hands out the ONNX graph) and the decode from ``_images.load_image``.

Run it again only when the default extractor's graph changes (``_nets.GRAPH_VERSION``)::

    python scripts/make_reference_embeddings.py            # writes tests/data/reference/

It takes about 20 s (the reference evaluator is slow by design).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
#: one photo per type, spread over the sample catalogue (ids relative to examples/catalog)
PHOTOS = (
    "dress/009b3c31-fb62-45c0-be9a-37a5c238cb88.jpg",
    "hat/00d94e21-5891-492e-be0e-792e7338c077.jpg",
    "shoes/",
    "t-shirt/",
)


def reference_pooled(graph: bytes, images: np.ndarray) -> np.ndarray:
    """The graph's ``pooled`` output evaluated by ``onnx.reference`` (opset raised to 21 if lower)."""
    import onnx
    from onnx import version_converter
    from onnx.reference import ReferenceEvaluator

    model = onnx.load_from_string(graph)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 21)
    if opset < 21:
        model = version_converter.convert_version(model, 21)
    run = ReferenceEvaluator(model)
    out = np.concatenate([run.run(["pooled"], {"images": images[i : i + 1]})[0] for i in range(len(images))])
    return (out / np.linalg.norm(out, axis=1, keepdims=True)).astype(np.float32)


def resolve(catalog: Path) -> list[str]:
    ids = []
    for p in PHOTOS:
        if p.endswith("/"):
            p = p + sorted(q.name for q in (catalog / p).glob("*.jpg"))[0]
        ids.append(p)
    return ids


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--catalog", type=Path, default=REPO / "examples" / "catalog")
    ap.add_argument("--out", type=Path, default=REPO / "tests" / "data" / "reference")
    args = ap.parse_args(argv)
    if not args.catalog.is_dir():
        sys.exit(f"--catalog {str(args.catalog)!r} is not a folder")
    from PIL import Image

    from varsitysrch import get_extractor
    from varsitysrch._extractors import _onnx_model_bytes
    from varsitysrch._images import load_image

    ex = get_extractor()
    ids = resolve(args.catalog)
    images = np.stack([load_image(args.catalog / i, ex.input_size, ex.resize) for i in ids])
    t = time.perf_counter()
    ref = reference_pooled(_onnx_model_bytes(ex), images)
    args.out.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (rel, img) in enumerate(zip(ids, images, strict=True)):
        name = f"input{i}.png"
        Image.fromarray(img, "RGB").save(args.out / name, optimize=True)
        names.append({"photo": rel, "input": name})
    np.save(args.out / "pooled.npy", ref, allow_pickle=False)
    meta = {
        "generator": "scripts/make_reference_embeddings.py",
        "evaluator": "onnx.reference.ReferenceEvaluator",
        "extractor": ex.identity(),
        "photos": names,
    }
    (args.out / "reference.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    took = time.perf_counter() - t
    print(f"{len(ids)} reference embeddings of {ex.name} written to {args.out} ({took:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
