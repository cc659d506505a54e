"""The same embedding on every CPU: onnxruntime's answer against a CPU-independent reference.

``tests/data/reference`` holds a few shipped photos decoded as the default extractor decodes them
(lossless PNG) and their embeddings computed by ``onnx.reference.ReferenceEvaluator`` (plain numpy,
no instruction-set-specific kernels), written by ``scripts/make_reference_embeddings.py``.  On a CPU
whose kernels change the answer (the old full-range int8 graph on AVX2 gave cosine 0.98-0.99) these
tests fail.  To exercise other kernels on one machine, run this file under Debian's qemu-user, e.g.
``qemu-x86_64 -cpu Nehalem .venv/bin/python -m pytest tests/test_portable.py`` (SSE4 kernels).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from varsitysrch import IncompatibleError, get_extractor
from varsitysrch._extractors import _INT8_SCHEME, Embedder, Extractor, _onnx_model_bytes
from varsitysrch._images import load_image

REF = Path(__file__).parent / "data" / "reference"
CATALOG = Path(__file__).resolve().parents[1] / "examples" / "catalog"
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
#: one rounding step of float32 accumulation order is ~1e-7; kernels that compute a different
#: function (saturating int8 products) land at 0.98-0.99
FAITHFUL = 0.999


def _meta() -> dict:
    return json.loads((REF / "reference.json").read_text(encoding="utf-8"))


def _inputs() -> np.ndarray:
    return np.stack([np.asarray(Image.open(REF / p["input"]).convert("RGB")) for p in _meta()["photos"]])


def _cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return np.asarray((a * b).sum(axis=1))


def test_reference_is_of_the_default_extractor() -> None:
    """A change of the default's graph or preprocessing must come with new reference embeddings."""
    rec = _meta()["extractor"]
    assert get_extractor().compatible_with(rec), "rerun scripts/make_reference_embeddings.py"
    assert rec["quantized"] is False


def test_default_embeds_as_the_reference_on_this_cpu() -> None:
    ref = np.load(REF / "pooled.npy", allow_pickle=False)
    got = Embedder(get_extractor(), threads=2).embed(_inputs())
    cos = _cos(got, ref)
    assert cos.min() >= FAITHFUL, cos
    # different photos stay different: the check is not satisfied by a constant vector
    assert _cos(ref[:1], ref[1:]).max() < 0.9


def test_decoding_the_shipped_photos_gives_the_reference_inputs() -> None:
    ex = get_extractor()
    inputs = _inputs()
    for p, want in zip(_meta()["photos"], inputs, strict=True):
        got = load_image(CATALOG / p["photo"], ex.input_size, ex.resize)
        assert got.shape == want.shape
        # JPEG decoding and Pillow's fixed-point resize are integer code: a step of 1 is the most
        # a different libjpeg build may round differently
        assert np.abs(got.astype(int) - want).max() <= 1


def test_int8_opt_in_is_faithful_to_the_reference_of_its_own_graph() -> None:
    """The int8 graph's integers are the same on every CPU (7-bit weights: no saturating kernel)."""
    from make_reference_embeddings import reference_pooled

    from varsitysrch._quantize import _synthetic_calibration_images, quantize_static_int8

    size = 96  # the graph takes any input size; small keeps the numpy reference fast
    ex = dataclasses.replace(get_extractor(quantized=True), input_size=size)
    assert ex.quantized and ex.int8_scheme == _INT8_SCHEME
    int8 = quantize_static_int8(
        _onnx_model_bytes(get_extractor()), ex, calibration=_synthetic_calibration_images(8, size)
    )
    images = np.stack([np.asarray(Image.fromarray(x).resize((size, size))) for x in _inputs()[:3]])
    from varsitysrch._extractors import _run, _session

    got = _run(_session(int8, 2), images, "pooled")
    cos = _cos(got, reference_pooled(int8, images))
    assert cos.min() >= FAITHFUL, cos


def test_a_store_of_the_old_cpu_dependent_int8_graph_is_refused() -> None:
    new = get_extractor(quantized=True)
    old = {k: v for k, v in new.identity().items() if k != "int8_scheme"}
    assert not new.compatible_with(old)
    assert new.compatible_with(new.identity())
    with pytest.raises(IncompatibleError, match="re-extract"):
        _onnx_model_bytes(Extractor.from_identity(old))
    # fp32 records (every default store) stay compatible with or without the field
    fp32 = {k: v for k, v in get_extractor().identity().items() if k != "int8_scheme"}
    assert get_extractor().compatible_with(fp32)
