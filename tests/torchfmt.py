"""Write PyTorch-format checkpoints (zip and legacy) without torch, for tests.

Fake ``torch`` / ``torch._utils`` modules give pickle the same global names a real
``torch.save`` records, so the files are byte-compatible with what torch writes.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np

_DTYPE_TO_STORAGE = {np.dtype("float32"): "FloatStorage", np.dtype("int64"): "LongStorage"}


def _fake_torch() -> tuple[types.ModuleType, types.ModuleType]:
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called, only pickled by name
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    for name in _DTYPE_TO_STORAGE.values():
        cls = type(name, (), {"__module__": "torch", "__qualname__": name})
        setattr(torch, name, cls)
    torch._utils = utils  # type: ignore[attr-defined]
    return torch, utils


class _Tensor:
    def __init__(self, arr: np.ndarray, key: str) -> None:
        self.arr = np.array(arr, order="C", copy=True)
        self.key = key


def _pickle_state_dict(sd: dict[str, np.ndarray], legacy: bool) -> tuple[bytes, list[_Tensor]]:
    torch, utils = _fake_torch()
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules["torch"], sys.modules["torch._utils"] = torch, utils
    tensors = [_Tensor(v, str(i)) for i, v in enumerate(sd.values())]
    try:

        class P(pickle.Pickler):
            def persistent_id(self, obj):
                if isinstance(obj, _Tensor):
                    st = getattr(torch, _DTYPE_TO_STORAGE[obj.arr.dtype])
                    if legacy:
                        return ("storage", st, obj.key, "cpu", obj.arr.size, None)
                    return ("storage", st, obj.key, "cpu", obj.arr.size)
                return None

        class TensorReduce:
            def __init__(self, t: _Tensor) -> None:
                self.t = t

            def __reduce__(self):
                shape = tuple(self.t.arr.shape)
                stride = tuple(int(s // self.t.arr.itemsize) for s in self.t.arr.strides)
                return (
                    utils._rebuild_tensor_v2,
                    (self.t, 0, shape, stride, False, collections.OrderedDict()),
                )

        od = collections.OrderedDict((k, TensorReduce(t)) for k, t in zip(sd.keys(), tensors, strict=True))
        buf = io.BytesIO()
        P(buf, protocol=2).dump(od)
        return buf.getvalue(), tensors
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def save_zip(sd: dict[str, np.ndarray], path: Path) -> Path:
    data, tensors = _pickle_state_dict(sd, legacy=False)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", data)
        for t in tensors:
            zf.writestr(f"archive/data/{t.key}", t.arr.tobytes())
        zf.writestr("archive/version", "3\n")
    return path


def save_legacy(sd: dict[str, np.ndarray], path: Path) -> Path:
    data, tensors = _pickle_state_dict(sd, legacy=True)
    with open(path, "wb") as f:
        pickle.dump(0x1950A86A20F9469CFC6C, f, protocol=2)
        pickle.dump(1001, f, protocol=2)
        pickle.dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {}}, f, protocol=2)
        f.write(data)
        pickle.dump([t.key for t in tensors], f, protocol=2)
        for t in tensors:
            f.write(struct.pack("<q", t.arr.size))
            f.write(t.arr.tobytes())
    return path


def random_vgg16_state_dict(seed: int = 0) -> dict[str, np.ndarray]:
    from varsitysrch._nets import _VGG16_CFG, _vgg16_conv_keys

    rng = np.random.default_rng(seed)
    sd: dict[str, np.ndarray] = {}
    cin = 3
    widths = [v for v in _VGG16_CFG if v != "M"]
    for key, cout in zip(_vgg16_conv_keys(), widths, strict=True):
        std = np.sqrt(2.0 / (cin * 9))
        sd[f"{key}.weight"] = (rng.standard_normal((int(cout), cin, 3, 3)) * std).astype(np.float32)
        sd[f"{key}.bias"] = np.zeros(int(cout), np.float32)
        cin = int(cout)
    return sd
