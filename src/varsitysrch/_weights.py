"""Read PyTorch checkpoints into numpy arrays without torch, and without running code.

Both of PyTorch's on-disk formats are understood:

* the *legacy* format (torch < 1.6): a sequence of pickles followed by raw storages;
* the *zip* format (torch >= 1.6): ``archive/data.pkl`` plus one file per storage.

The pickles are read with a restricted unpickler whose ``find_class`` only resolves a
fixed allow-list of harmless names (``OrderedDict``, tensor rebuild helpers, storage
types).  Any other global -- ``os.system``, ``builtins.eval`` ... -- raises
:class:`~varsitysrch.ModelFileError`, so a malicious checkpoint cannot execute code.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import ModelFileError, strip_reprs

__all__ = ["load_torch_state_dict"]


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C

_STORAGE_DTYPES: dict[str, np.dtype[Any]] = {
    "FloatStorage": np.dtype("<f4"),
    "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}


class _StorageType:
    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


class _StorageRef:
    """A placeholder for a storage, resolved to a flat numpy array later."""

    def __init__(self, key: str, dtype: np.dtype[Any], numel: int) -> None:
        self.key = key
        self.dtype = dtype
        self.numel = numel
        self.array: np.ndarray | None = None


class _TensorRef:
    def __init__(self, storage: _StorageRef, offset: int, size: tuple[int, ...], stride: tuple[int, ...]):
        self.storage = storage
        self.offset = offset
        self.size = tuple(size)
        self.stride = tuple(stride)

    def to_numpy(self) -> np.ndarray:
        flat = self.storage.array
        if flat is None:
            raise ModelFileError(f"storage {self.storage.key!r} was never read")
        if not self.size:
            return np.array(flat[self.offset], dtype=flat.dtype)
        itemsize = flat.dtype.itemsize
        needed = self.offset + sum((s - 1) * st for s, st in zip(self.size, self.stride, strict=False)) + 1
        if needed > flat.size:
            raise ModelFileError("tensor extends past its storage: corrupt checkpoint")
        view = np.lib.stride_tricks.as_strided(
            flat[self.offset :],
            shape=self.size,
            strides=tuple(st * itemsize for st in self.stride),
            writeable=False,
        )
        return np.ascontiguousarray(view)


def _rebuild_tensor_v2(storage: Any, offset: int, size: Any, stride: Any, *args: Any) -> _TensorRef:
    if not isinstance(storage, _StorageRef):
        raise ModelFileError("unexpected tensor storage in checkpoint")
    return _TensorRef(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data: Any, requires_grad: Any = None, backward_hooks: Any = None, *args: Any) -> Any:
    return data


_ALLOWED: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): lambda s, o, size, stride: _rebuild_tensor_v2(s, o, size, stride),
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, storage_resolver: Any) -> None:
        super().__init__(file, encoding="utf-8")
        self._resolve = storage_resolver

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise ModelFileError(
            f"refusing to load {module}.{name} from a checkpoint: only tensors and dicts are allowed"
        )

    def persistent_load(self, pid: Any) -> Any:
        return self._resolve(pid)


def _legacy_load(data: bytes) -> dict[str, np.ndarray]:
    f = io.BytesIO(data)
    storages: dict[str, _StorageRef] = {}

    def resolve(pid: Any) -> Any:
        if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
            raise ModelFileError("unexpected persistent id in checkpoint")
        _, stype, key, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise ModelFileError("storage views are not supported")
        if not isinstance(stype, _StorageType):
            raise ModelFileError("unexpected storage type in checkpoint")
        if key not in storages:
            storages[key] = _StorageRef(key, stype.dtype, int(numel))
        return storages[key]

    def plain() -> Any:
        return _RestrictedUnpickler(f, resolve).load()

    magic = plain()
    if magic != _LEGACY_MAGIC:
        raise ModelFileError("not a PyTorch checkpoint (bad magic number)")
    plain()  # protocol version
    sys_info = plain()
    if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
        raise ModelFileError("big-endian checkpoints are not supported")
    result = plain()
    keys = plain()
    for key in keys:
        ref = storages.get(key)
        (numel,) = struct.unpack("<q", f.read(8))
        if ref is None:
            raise ModelFileError(f"unexpected storage {key!r} in checkpoint")
        nbytes = numel * ref.dtype.itemsize
        buf = f.read(nbytes)
        if len(buf) != nbytes:
            raise ModelFileError("checkpoint is truncated")
        ref.array = np.frombuffer(buf, dtype=ref.dtype)
    return _materialise(result)


def _zip_load(path: Path) -> dict[str, np.ndarray]:
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        pkl = [n for n in names if n.endswith("/data.pkl") or n == "data.pkl"]
        if not pkl:
            raise ModelFileError("zip checkpoint has no data.pkl")
        prefix = pkl[0][: -len("data.pkl")]
        storages: dict[str, _StorageRef] = {}

        def resolve(pid: Any) -> Any:
            if not isinstance(pid, tuple) or not pid or pid[0] != "storage":
                raise ModelFileError("unexpected persistent id in checkpoint")
            _, stype, key, _location, numel = pid[:5]
            if not isinstance(stype, _StorageType):
                raise ModelFileError("unexpected storage type in checkpoint")
            if key not in storages:
                ref = _StorageRef(str(key), stype.dtype, int(numel))
                raw = zf.read(f"{prefix}data/{key}")
                ref.array = np.frombuffer(raw, dtype=stype.dtype)
                storages[key] = ref
            return storages[key]

        result = _RestrictedUnpickler(io.BytesIO(zf.read(pkl[0])), resolve).load()
    return _materialise(result)


def _materialise(obj: Any) -> dict[str, np.ndarray]:
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ModelFileError("checkpoint does not hold a state_dict")
    out: dict[str, np.ndarray] = {}
    for k, v in obj.items():
        if isinstance(v, _TensorRef):
            out[str(k)] = v.to_numpy()
    return out


def load_torch_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Return the tensors of a PyTorch checkpoint as ``{name: ndarray}``, without torch."""
    path = Path(path)
    try:
        if zipfile.is_zipfile(path):
            return _zip_load(path)
        return _legacy_load(path.read_bytes())
    except ModelFileError:
        raise
    except (pickle.UnpicklingError, EOFError, struct.error, ValueError, KeyError, TypeError) as exc:
        detail = strip_reprs(str(exc)).strip()
        reason = f" ({detail})" if detail else ""
        raise ModelFileError(f"{str(path)!r} is not a readable PyTorch checkpoint{reason}") from exc
