"""Build ONNX graphs of the built-in CNNs from numpy state dicts (no torch needed).

Each builder returns a serialized ONNX ``ModelProto`` whose input ``images`` is a
``uint8`` batch ``[N, H, W, 3]`` (RGB) and whose outputs are

* ``pooled``  -- ``float32 [N, C]``: global average pool of the last feature map,
* ``gem``     -- ``float32 [N, C]``: generalised-mean (p=3) pool of the same map,
* ``rmac``    -- ``float32 [N, C]``: R-MAC (Tolias et al., ICLR 2016) of the same map:
  max-pooled square regions at ``_RMAC_LEVELS`` scales, each L2-normalised, summed and
  L2-normalised (:func:`_rmac_regions` says where the regions lie; no whitening),
* ``logits``  -- ``float32 [N, 1000]``: the ImageNet head, where the network has one.

Normalisation (mean/scale) happens inside the graph, and BatchNorm layers are folded
into the convolutions that precede them.  :func:`build_efficientnet_lite_ensemble` runs several
EfficientNet-Lites on the one input: its ``pooled`` / ``gem`` / ``rmac`` are the networks'
vectors, each L2-normalised, concatenated (no ``logits``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = [
    "GRAPH_VERSION",
    "build_efficientnet_lite",
    "build_efficientnet_lite_ensemble",
    "build_mobilenet_v2",
    "build_vgg16_block5pool",
]


_GEM_P = 3.0
#: R-MAC scales l = 1..L (Tolias et al. use L = 3: 1 + 4 + 9 regions on a square map).
_RMAC_LEVELS = 3
_RMAC_EPS = 1e-6

#: Version of the graphs these builders produce (and of the preprocessing inside them).
#: Bump it whenever a change here (or in the in-graph normalisation) changes the vectors:
#: it keys the ONNX graph cache and is recorded in every store's extractor identity, so a
#: store made by an older graph is refused instead of being mixed with new vectors.
#: (The cache key also hashes this module's source, so an edit that forgets the bump still
#: rebuilds the cached graph.)  Adding an output (``rmac``) leaves the others' vectors as they
#: were, so it needs no bump: the cached graph is rebuilt (source hash), the stores stay valid.
GRAPH_VERSION = 1


def _rmac_regions(height: int, width: int, levels: int = _RMAC_LEVELS) -> list[tuple[int, int, int]]:
    """The R-MAC regions of a ``height x width`` map: ``(top, left, side)`` squares.

    At scale ``l`` (1..``levels``) the square side is ``max(1, 2 * min(H, W) // (l + 1))`` and
    ``l x l`` regions are spread evenly over each side (start ``i * (side_len - side) // (l - 1)``),
    which on a square map gives the ~40 % overlap of neighbouring regions of Tolias et al. (at
    l = 1 the one region is the largest square, at the top-left of a non-square map; the
    pipeline feeds square images, so its maps are square).  The graph's ``rmac`` output
    computes these same regions from the map's run-time shape.
    """
    short = min(height, width)
    out: list[tuple[int, int, int]] = []
    for lev in range(1, levels + 1):
        side = max(1, 2 * short // (lev + 1))
        for i in range(lev):
            for j in range(lev):
                top = 0 if lev == 1 else i * (height - side) // (lev - 1)
                left = 0 if lev == 1 else j * (width - side) // (lev - 1)
                out.append((top, left, side))
    return out


class _Graph:
    def __init__(self, sd: dict[str, np.ndarray]) -> None:
        import onnx  # noqa: F401  (fail early with ImportError)

        self.sd = sd
        self.nodes: list[Any] = []
        self.inits: list[Any] = []
        self._n = 0

    def name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}_{self._n}"

    def const(self, arr: np.ndarray, prefix: str = "c") -> str:
        from onnx import numpy_helper

        n = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(self, op: str, inputs: list[str], prefix: str | None = None, **attrs: Any) -> str:
        from onnx import helper

        out = self.name(prefix or op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], **attrs))
        return out

    def conv(
        self,
        x: str,
        w: np.ndarray,
        b: np.ndarray | None,
        *,
        stride: int = 1,
        group: int = 1,
        pads: str | int = "same_upper",
    ) -> str:
        k = w.shape[2]
        attrs: dict[str, Any] = {"strides": [stride, stride], "group": group, "kernel_shape": [k, k]}
        if pads == "same_upper":
            attrs["auto_pad"] = "SAME_UPPER"
        else:
            p = int(pads)
            attrs["pads"] = [p, p, p, p]
        ins = [x, self.const(w.astype(np.float32), "w")]
        if b is not None:
            ins.append(self.const(b.astype(np.float32), "b"))
        return self.node("Conv", ins, "conv", **attrs)

    def conv_bn(
        self,
        x: str,
        conv: str,
        bn: str,
        *,
        eps: float,
        stride: int = 1,
        group: int = 1,
        pads: str | int = "same_upper",
    ) -> str:
        w = self.sd[f"{conv}.weight"]
        gamma, beta = self.sd[f"{bn}.weight"], self.sd[f"{bn}.bias"]
        mean, var = self.sd[f"{bn}.running_mean"], self.sd[f"{bn}.running_var"]
        scale = gamma / np.sqrt(var + eps)
        w = w * scale[:, None, None, None]
        b = beta - mean * scale
        if f"{conv}.bias" in self.sd:
            b = b + self.sd[f"{conv}.bias"] * scale
        return self.conv(x, w, b, stride=stride, group=group, pads=pads)

    def relu6(self, x: str) -> str:
        lo = self.const(np.array(0.0, np.float32))
        hi = self.const(np.array(6.0, np.float32))
        return self.node("Clip", [x, lo, hi], "relu6")

    def relu(self, x: str) -> str:
        return self.node("Relu", [x])

    def input_stage(self, mean: np.ndarray, scale: np.ndarray) -> str:
        """uint8 NHWC -> normalised float NCHW: (x - mean) * scale per channel."""
        x = self.node("Cast", ["images"], "cast", to=1)
        x = self.node("Transpose", [x], "nchw", perm=[0, 3, 1, 2])
        x = self.node("Sub", [x, self.const(mean.reshape(1, 3, 1, 1).astype(np.float32))])
        return self.node("Mul", [x, self.const(scale.reshape(1, 3, 1, 1).astype(np.float32))])

    def _l2n(self, v: str) -> str:
        """Rows of ``[N, C]`` divided by (their L2 norm + eps)."""
        sq = self.node("ReduceSumSquare", [v], "ssq", axes=[1], keepdims=1)
        norm = self.node("Add", [self.node("Sqrt", [sq]), self.const(np.array(_RMAC_EPS, np.float32))])
        return self.node("Div", [v, norm], "l2n")

    def _dim(self, fmap: str, axis: int) -> str:
        """The map's size along ``axis`` as an int64 ``[1]`` tensor."""
        shape = self.node("Shape", [fmap])
        return self.node("Gather", [shape, self.const(np.array([axis], np.int64), "i")], "dim", axis=0)

    def rmac(self, fmap: str) -> str:
        """R-MAC of ``fmap`` ``[N, C, H, W]`` -> ``[N, C]`` (regions: :func:`_rmac_regions`)."""

        def i64(v: int) -> str:
            return self.const(np.array([v], np.int64), "i")

        hgt, wid = self._dim(fmap, 2), self._dim(fmap, 3)
        short = self.node("Min", [hgt, wid])
        axes = i64(2)
        total: str | None = None
        for lev in range(1, _RMAC_LEVELS + 1):
            side = self.node(
                "Max", [self.node("Div", [self.node("Mul", [short, i64(2)]), i64(lev + 1)]), i64(1)]
            )
            starts_h: list[str] = []
            starts_w: list[str] = []
            for i in range(lev):
                if lev == 1:
                    starts_h.append(i64(0))
                    starts_w.append(i64(0))
                    continue
                for dim, starts in ((hgt, starts_h), (wid, starts_w)):
                    free = self.node("Mul", [self.node("Sub", [dim, side]), i64(i)])
                    starts.append(self.node("Div", [free, i64(lev - 1)]))
            for top in starts_h:
                # rows first (one slice per row band), then the columns of each band
                band = self.node("Slice", [fmap, top, self.node("Add", [top, side]), axes])
                for left in starts_w:
                    cell = self.node("Slice", [band, left, self.node("Add", [left, side]), i64(3)])
                    v = self._l2n(self.node("ReduceMax", [cell], "rmax", axes=[2, 3], keepdims=0))
                    total = v if total is None else self.node("Add", [total, v], "rsum")
        assert total is not None
        return self._l2n(total)

    def pools(self, fmap: str) -> tuple[str, str, str]:
        """The three pooled vectors of ``fmap`` ``[N, C, H, W]``: average, GeM and R-MAC, ``[N, C]``."""
        pooled_4d = self.node("GlobalAveragePool", [fmap], "gap")
        pooled = self.node("Flatten", [pooled_4d], "pooled", axis=1)
        # GeM: (mean(clamp(x, eps)^p))^(1/p)
        eps = self.const(np.array(1e-6, np.float32))
        clamped = self.node("Max", [fmap, eps])
        powered = self.node("Pow", [clamped, self.const(np.array(_GEM_P, np.float32))])
        mean = self.node("GlobalAveragePool", [powered])
        rooted = self.node("Pow", [mean, self.const(np.array(1.0 / _GEM_P, np.float32))])
        gem = self.node("Flatten", [rooted], "gem", axis=1)
        return pooled, gem, self.rmac(fmap)

    def outputs(self, fmap: str, fc: tuple[np.ndarray, np.ndarray] | None, channels: int) -> bytes:
        pooled, gem, rmac = self.pools(fmap)
        return self.finish({"pooled": pooled, "gem": gem, "rmac": rmac}, channels, fc)

    def finish(
        self, heads: dict[str, str], channels: int, fc: tuple[np.ndarray, np.ndarray] | None = None
    ) -> bytes:
        """The serialized model: ``heads`` (output name -> ``[N, channels]`` tensor), then ``logits``."""
        from onnx import TensorProto, helper

        outs = []
        pooled = heads["pooled"]
        for out_name, tensor in heads.items():
            self.nodes.append(helper.make_node("Identity", [tensor], [out_name]))
            outs.append(helper.make_tensor_value_info(out_name, TensorProto.FLOAT, ["N", channels]))
        if fc is not None:
            w, b = fc
            logits = self.node(
                "Gemm",
                [pooled, self.const(w.astype(np.float32)), self.const(b.astype(np.float32))],
                "fc",
                transB=1,
            )
            self.nodes.append(helper.make_node("Identity", [logits], ["logits"]))
            outs.append(helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", int(w.shape[0])]))
        inp = helper.make_tensor_value_info("images", TensorProto.UINT8, ["N", "H", "W", 3])
        graph = helper.make_graph(self.nodes, "varsitysrch", [inp], outs, initializer=self.inits)
        model = helper.make_model(
            graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="varsitysrch"
        )
        model.ir_version = 8
        return bytes(model.SerializeToString())


# ---------------------------------------------------------------- EfficientNet-Lite
_LITE_MEAN, _LITE_SCALE = np.full(3, 127.0), np.full(3, 1.0 / 128.0)


def build_efficientnet_lite(sd: dict[str, np.ndarray]) -> bytes:
    """EfficientNet-Lite (lukemelas naming): TF SAME padding, ReLU6, BN eps 1e-3, no SE."""
    g = _Graph(sd)
    fmap, head = _lite_trunk(g, g.input_stage(_LITE_MEAN, _LITE_SCALE))
    fc = (sd["_fc.weight"], sd["_fc.bias"]) if "_fc.weight" in sd else None
    return g.outputs(fmap, fc, head)


def build_efficientnet_lite_ensemble(sds: list[dict[str, np.ndarray]]) -> bytes:
    """Several EfficientNet-Lite networks on one input, their pooled vectors side by side.

    One ``images`` input feeds every network (the same in-graph normalisation: all Lites share
    it); each network's ``pooled`` / ``gem`` / ``rmac`` vector is L2-normalised, and the graph's
    output of that name is their concatenation in ``sds``' order (equal weight: ``[N, sum C]``).
    No ``logits``: the networks' heads are not one classifier.
    """
    if len(sds) < 2:
        raise ValueError(f"an ensemble needs at least 2 networks; got {len(sds)}")
    g = _Graph(sds[0])
    x = g.input_stage(_LITE_MEAN, _LITE_SCALE)
    parts: dict[str, list[str]] = {"pooled": [], "gem": [], "rmac": []}
    channels = 0
    for sd in sds:
        g.sd = sd
        fmap, head = _lite_trunk(g, x)
        channels += head
        for out_name, vec in zip(parts, g.pools(fmap), strict=True):
            parts[out_name].append(g._l2n(vec))
    heads = {k: g.node("Concat", v, f"cat_{k}", axis=1) for k, v in parts.items()}
    return g.finish(heads, channels)


def _lite_trunk(g: _Graph, x: str) -> tuple[str, int]:
    """EfficientNet-Lite from the normalised input ``x`` to its last feature map (and its channels)."""
    eps = 1e-3
    sd = g.sd
    x = g.relu6(g.conv_bn(x, "_conv_stem", "_bn0", eps=eps, stride=2))
    n_blocks = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("_blocks."))
    channels = sd["_conv_stem.weight"].shape[0]
    # the seven stages of the B0 layout are told apart by their output widths;
    # the first block of a stage carries the stage's stride.
    stage_out: list[int] = [sd[f"_blocks.{i}._project_conv.weight"].shape[0] for i in range(n_blocks)]
    stage_strides = [1, 2, 2, 2, 1, 2, 1]
    prev_out = channels
    stage = -1
    for i in range(n_blocks):
        p = f"_blocks.{i}"
        out_c = stage_out[i]
        first_of_stage = i == 0 or stage_out[i - 1] != out_c
        stage += int(first_of_stage)
        stride = stage_strides[min(stage, 6)] if first_of_stage else 1
        h = x
        if f"{p}._expand_conv.weight" in sd:
            h = g.relu6(g.conv_bn(h, f"{p}._expand_conv", f"{p}._bn0", eps=eps))
        dw = sd[f"{p}._depthwise_conv.weight"]
        h = g.relu6(
            g.conv_bn(h, f"{p}._depthwise_conv", f"{p}._bn1", eps=eps, stride=stride, group=dw.shape[0])
        )
        h = g.conv_bn(h, f"{p}._project_conv", f"{p}._bn2", eps=eps)
        if stride == 1 and prev_out == out_c:
            h = g.node("Add", [h, x], "skip")
        x = h
        prev_out = out_c
    x = g.relu6(g.conv_bn(x, "_conv_head", "_bn1", eps=eps))
    return x, int(sd["_conv_head.weight"].shape[0])


# ---------------------------------------------------------------- MobileNetV2 (torchvision)
_MBV2_SETTINGS = [
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
]


def build_mobilenet_v2(sd: dict[str, np.ndarray]) -> bytes:
    """torchvision MobileNetV2: symmetric padding, ReLU6, BN eps 1e-5, ImageNet mean/std."""
    eps = 1e-5
    g = _Graph(sd)
    mean = np.array([0.485, 0.456, 0.406]) * 255.0
    scale = 1.0 / (np.array([0.229, 0.224, 0.225]) * 255.0)
    x = g.input_stage(mean, scale)
    x = g.relu6(g.conv_bn(x, "features.0.0", "features.0.1", eps=eps, stride=2, pads=1))
    idx = 1
    in_c = 32
    for t, c, n, s in _MBV2_SETTINGS:
        for j in range(n):
            stride = s if j == 0 else 1
            p = f"features.{idx}.conv"
            h = x
            k = 0
            if t != 1:
                h = g.relu6(g.conv_bn(h, f"{p}.0.0", f"{p}.0.1", eps=eps, pads=0))
                k = 1
            dw = sd[f"{p}.{k}.0.weight"]
            h = g.relu6(
                g.conv_bn(h, f"{p}.{k}.0", f"{p}.{k}.1", eps=eps, stride=stride, group=dw.shape[0], pads=1)
            )
            h = g.conv_bn(h, f"{p}.{k + 1}", f"{p}.{k + 2}", eps=eps, pads=0)
            if stride == 1 and in_c == c:
                h = g.node("Add", [h, x], "skip")
            x = h
            in_c = c
            idx += 1
    x = g.relu6(g.conv_bn(x, f"features.{idx}.0", f"features.{idx}.1", eps=eps, pads=0))
    head = sd[f"features.{idx}.0.weight"].shape[0]
    fc = (sd["classifier.1.weight"], sd["classifier.1.bias"]) if "classifier.1.weight" in sd else None
    return g.outputs(x, fc, head)


# ---------------------------------------------------------------- VGG16 up to block5_pool
_VGG16_CFG: list[int | str] = [
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    "M",
]


def _vgg16_conv_keys() -> list[str]:
    """torchvision's ``features.N`` indices of VGG16's 13 convolutions."""
    keys, i = [], 0
    for v in _VGG16_CFG:
        if v == "M":
            i += 1
        else:
            keys.append(f"features.{i}")
            i += 2
    return keys


def build_vgg16_block5pool(sd: dict[str, np.ndarray]) -> bytes:
    """VGG16 convolutions up to block5_pool (torchvision weights), ImageNet mean/std."""
    g = _Graph(sd)
    mean = np.array([0.485, 0.456, 0.406]) * 255.0
    scale = 1.0 / (np.array([0.229, 0.224, 0.225]) * 255.0)
    x = g.input_stage(mean, scale)
    keys = iter(_vgg16_conv_keys())
    for v in _VGG16_CFG:
        if v == "M":
            x = g.node("MaxPool", [x], "pool", kernel_shape=[2, 2], strides=[2, 2])
        else:
            k = next(keys)
            x = g.relu(g.conv(x, sd[f"{k}.weight"], sd[f"{k}.bias"], pads=1))
    return g.outputs(x, None, 512)
