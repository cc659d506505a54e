"""R-MAC pooling (Tolias et al., ICLR 2016): the regions, the graph head against numpy, the identity."""

from __future__ import annotations

import numpy as np
import pytest

from varsitysrch import IncompatibleFeaturesError, InvalidArgumentError, get_extractor
from varsitysrch._nets import _rmac_regions

# (top, left, side) on an 8 x 8 map, worked out by hand from the paper's rule: at scale l the
# square side is 2 * 8 // (l + 1) (8, 5, 4) and l regions per side are spread evenly from edge to
# edge (starts 0, 3 at l = 2: 40 % overlap; 0, 2, 4 at l = 3)
_REGIONS_8X8 = [
    (0, 0, 8),
    *[(t, left, 5) for t in (0, 3) for left in (0, 3)],
    *[(t, left, 4) for t in (0, 2, 4) for left in (0, 2, 4)],
]


def _rmac_numpy(fmap: np.ndarray, regions: list[tuple[int, int, int]]) -> np.ndarray:
    total = np.zeros(fmap.shape[:2])
    for top, left, side in regions:
        v = fmap[:, :, top : top + side, left : left + side].max(axis=(2, 3))
        total += v / (np.linalg.norm(v, axis=1, keepdims=True) + 1e-6)
    return total / (np.linalg.norm(total, axis=1, keepdims=True) + 1e-6)


def _rmac_session():  # type: ignore[no-untyped-def]
    """The ``rmac`` head of the built-in graphs alone, on a ``[N, C, H, W]`` float input."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    from varsitysrch._nets import _Graph

    g = _Graph({})
    out = g.rmac("fmap")
    g.nodes.append(helper.make_node("Identity", [out], ["rmac"]))
    graph = helper.make_graph(
        g.nodes,
        "rmac",
        [helper.make_tensor_value_info("fmap", TensorProto.FLOAT, ["N", "C", "H", "W"])],
        [helper.make_tensor_value_info("rmac", TensorProto.FLOAT, ["N", "C"])],
        initializer=g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])


def test_regions_of_a_square_map_are_the_papers() -> None:
    assert _rmac_regions(8, 8) == _REGIONS_8X8
    # 9 x 9 (Lite2 at 288 px): sides 9, 6, 4; starts 0, 3 and 0, 2, 5
    nine = _rmac_regions(9, 9)
    assert nine[:5] == [(0, 0, 9), (0, 0, 6), (0, 3, 6), (3, 0, 6), (3, 3, 6)]
    assert sorted({t for t, _, s in nine if s == 4}) == [0, 2, 5]
    # every region lies inside the map, on any size; a 1 x 1 map keeps 14 one-cell regions
    for h, w in [(1, 1), (2, 2), (7, 7), (3, 5), (10, 6)]:
        regions = _rmac_regions(h, w)
        assert len(regions) == 14
        assert all(t >= 0 and left >= 0 and t + s <= h and left + s <= w and s >= 1 for t, left, s in regions)


def test_graph_head_equals_numpy_on_a_feature_map_like_input() -> None:
    sess = _rmac_session()
    rng = np.random.default_rng(0)
    # post-ReLU6-like maps: sparse, non-negative, a few strong local peaks
    fmap = np.clip(rng.normal(0.0, 2.0, (3, 16, 8, 8)), 0, 6).astype(np.float32)
    fmap[0, :, 6, 1] = 6.0  # a peak only the lower-left regions hold
    got = sess.run(None, {"fmap": fmap})[0]
    want = _rmac_numpy(fmap.astype(np.float64), _REGIONS_8X8)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # not the global max (MAC) nor the average: the regions matter
    mac = fmap.max(axis=(2, 3))
    mac /= np.linalg.norm(mac, axis=1, keepdims=True)
    assert np.abs(got - mac).max() > 1e-3
    # other sizes (shape read at run time): the same regions as _rmac_regions says
    for h, w in [(9, 9), (7, 7), (1, 1), (3, 5), (10, 6)]:
        x = np.clip(rng.normal(0.0, 2.0, (2, 5, h, w)), 0, 6).astype(np.float32)
        np.testing.assert_allclose(
            sess.run(None, {"fmap": x})[0], _rmac_numpy(x.astype(np.float64), _rmac_regions(h, w)), atol=1e-5
        )


def test_rmac_is_its_own_extractor_identity() -> None:
    default = get_extractor()
    rmac = get_extractor(None, pooling="rmac")
    assert rmac.pooling == "rmac" and rmac.identity()["pooling"] == "rmac"
    assert rmac.graph_version == default.graph_version  # the default's vectors and stores stay valid
    assert not rmac.compatible_with(default.identity())
    with pytest.raises(IncompatibleFeaturesError, match="pooling: 'pooled' there vs 'rmac' here"):
        rmac.check_compatible(default.identity(), "store x")
    with pytest.raises(InvalidArgumentError, match="'pooled', 'gem' or 'rmac'; got 'max'"):
        get_extractor(None, pooling="max")
