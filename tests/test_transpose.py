"""The permutation kernel (C, with a numpy fallback): bit-exact against numpy's transpose for
every dtype size, axis order and block size, and safe against wrong calls."""
import hashlib
import itertools
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from transcoder.rules import registry, transpose
from transcoder.rules.ops import Permute

SHAPES = [(5,), (17, 9), (8, 8), (64, 24), (33, 70, 3, 3), (16, 16, 1, 1), (9, 13, 5),
          (2, 3, 4, 5, 6), (1, 40, 1, 7), (0, 4)]
DTYPES = [np.float32, np.float16, np.float64, np.int8, np.int64, np.complex128]
KERNELS = ["c", "numpy"]


@pytest.fixture(params=KERNELS)
def kernel(request, monkeypatch):
    if request.param == "numpy":
        monkeypatch.setattr(transpose, "_transpose", None)
        monkeypatch.setattr(transpose, "TILED_FROM_BYTES", 0)
    return request.param


def test_the_c_kernel_is_built():
    """setup.py builds it (optional, so an install without a compiler still works); the
    benchmark figures depend on it, so its absence must not go unnoticed here."""
    assert transpose._transpose is not None


@pytest.mark.skipif(transpose._transpose is None, reason="C kernel not built")
def test_the_c_kernel_is_built_from_this_source():
    """The kernel is built in place and git-ignored: after a change to ``_transpose.c`` (a merge
    included) an old build would otherwise be tested and benchmarked without anyone noticing."""
    source = Path(transpose.__file__).with_name("_transpose.c")
    if not source.exists():
        pytest.skip("an installed package: no source beside the kernel")
    assert transpose._transpose.SOURCE_SHA256 == hashlib.sha256(source.read_bytes()).hexdigest(), \
        f"{transpose._transpose.__file__} is stale: python setup.py build_ext --inplace"


def _source(shape, dtype, seed=0):
    values = np.random.default_rng(seed).standard_normal(shape) * 100
    return values.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_every_axis_order_is_bit_exact(kernel, dtype):
    for shape in SHAPES:
        x = _source(shape, dtype)
        for axes in itertools.permutations(range(len(shape))):
            want = np.ascontiguousarray(x.transpose(axes))
            got = transpose.permute_array(x, axes)
            assert got.dtype == want.dtype and got.shape == want.shape, (shape, axes)
            assert got.tobytes() == want.tobytes(), (shape, axes)


@pytest.mark.parametrize("scratch_bytes", [1, 64, 1000, 1 << 16])
def test_blocks_join_to_the_permuted_bytes(kernel, scratch_bytes):
    for shape, axes in [((300, 70), (1, 0)), ((33, 70, 3, 3), (2, 3, 1, 0)),
                        ((16, 16, 1, 1), (2, 3, 1, 0)), ((9, 13, 5), (2, 1, 0)), ((40, 7), (0, 1))]:
        x = _source(shape, np.float32)
        blocks = [bytes(b) for b in transpose.permuted_blocks(x, axes, np.empty(scratch_bytes, np.uint8))]
        assert b"".join(blocks) == np.ascontiguousarray(x.transpose(axes)).tobytes(), (shape, axes)
        if x.nbytes > scratch_bytes >= 1000 and axes != (0, 1):
            assert len(blocks) > 1, "a tensor larger than the scratch buffer comes in blocks"


def test_big_float32_and_float16_transposes(kernel):
    """Sizes past the kernel's 64-element cache blocks and the numpy fallback's tiles."""
    for dtype in (np.float32, np.float16):
        x = _source((600, 700), dtype)
        assert transpose.permute_array(x, (1, 0)).tobytes() == np.ascontiguousarray(x.T).tobytes()


def test_non_contiguous_input_is_copied_first(kernel):
    x = _source((20, 30), np.float32)[:, ::2]
    assert transpose.permute_array(x, (1, 0)).tobytes() == np.ascontiguousarray(x.T).tobytes()


@pytest.mark.skipif(transpose._transpose is None, reason="C kernel not built")
def test_the_c_kernel_refuses_out_of_bounds_views():
    src, dst = np.zeros(64, np.uint8), np.zeros(64, np.uint8)
    permute = transpose._transpose.permute
    with pytest.raises(ValueError, match="outside the source"):
        permute(src, 0, dst, (4, 4), (4, 20), 4)     # reaches byte 3*4 + 3*20 + 4 = 76 > 64
    with pytest.raises(ValueError, match="outside the source"):
        permute(src, 60, dst, (2,), (4,), 4)
    with pytest.raises(ValueError, match="too small"):
        permute(np.zeros(256, np.uint8), 0, dst, (8, 8), (32, 4), 4)
    with pytest.raises(ValueError, match="negative"):
        permute(src, 0, dst, (2, -1), (4, 4), 4)
    with pytest.raises(TypeError):
        permute(src, 0, np.zeros(64, np.uint8).tobytes(), (4,), (4,), 4)  # read-only destination
    permute(src, 0, dst, (0, 4), (4, 4), 4)                                 # empty: nothing to do


# ------------------------------------------------------------ the axis orders the rules use

#: every permutation a rule can ask for, both ways (checked against the table below)
RULE_AXES = {(1, 0), (2, 1, 0), (2, 3, 1, 0), (3, 2, 0, 1), (2, 3, 4, 1, 0), (4, 3, 0, 1, 2)}
#: PyTorch shapes: k = 1, sizes that are no multiple of 8, size-1 axes, runs shorter than a tile
RULE_SHAPES = {
    2: [(1024, 520), (1, 9), (9, 1), (13, 70), (8, 8), (7, 129), (300, 3)],
    3: [(512, 64, 5), (7, 9, 1), (16, 3, 5), (1, 33, 5), (33, 1, 3), (24, 17, 2), (5, 130, 3),
        # Conv1d: k = 1 to 9, in and out no multiples of 8, several cache blocks, size-1 axes
        (37, 29, 7), (70, 13, 9), (65, 65, 3), (8, 150, 3), (130, 67, 1), (100, 1, 9),
        (9, 100, 2), (1, 1, 7)],
    4: [(64, 32, 3, 3), (10, 3, 3, 3), (16, 16, 1, 1), (9, 1, 3, 3), (24, 40, 1, 7), (1, 1, 5, 5)],
    5: [(16, 8, 3, 3, 3), (3, 5, 1, 3, 2), (9, 13, 2, 1, 3), (1, 17, 3, 3, 3)],
}
RULE_DTYPES = [np.float32, np.int32, np.float16, ml_dtypes.bfloat16, np.float64, np.int8]


def _rule_axes():
    axes = set()
    for rule in registry.TABLE:
        for param in rule.params:
            if isinstance(param.op, Permute):
                axes |= {param.op.axes, param.op.inverse_axes}
    return axes


def test_the_rule_table_uses_only_the_axis_orders_tested_here():
    assert _rule_axes() == RULE_AXES


def _raw(shape, dtype, seed=0):
    """Random bytes as ``dtype``: NaNs with payloads, signed zeros and subnormals included."""
    itemsize = np.dtype(dtype).itemsize
    data = np.random.default_rng(seed).integers(0, 256, int(np.prod(shape)) * itemsize, np.uint8)
    return data.view(dtype).reshape(shape)


def _numpy_only(monkeypatch, tiled_from):
    monkeypatch.setattr(transpose, "_transpose", None)
    monkeypatch.setattr(transpose, "TILED_FROM_BYTES", tiled_from)


@pytest.mark.skipif(transpose._transpose is None, reason="C kernel not built")
@pytest.mark.parametrize("dtype", RULE_DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("axes", sorted(RULE_AXES), ids=str)
def test_rule_permutations_c_numpy_and_transpose_agree(monkeypatch, axes, dtype):
    """C kernel, numpy fallback (tiled and whole) and ``np.ascontiguousarray(x.transpose())``
    give the same bytes for every axis order of the rule table, whole and in pieces."""
    for shape in RULE_SHAPES[len(axes)]:
        x = _raw(shape, dtype)
        want = np.ascontiguousarray(x.transpose(axes)).tobytes()
        got = {"c": transpose.permute_array(x, axes).tobytes(),
               "c pieces": _joined(x, axes, 1 << 12, (0, 1))}
        with monkeypatch.context() as m:
            for name, tiled_from in (("numpy tiled", 0), ("numpy whole", 1 << 60)):
                _numpy_only(m, tiled_from)
                got[name] = transpose.permute_array(x, axes).tobytes()
                got[name + " pieces"] = _joined(x, axes, 1 << 12, (0, 1))
        for name, data in got.items():
            assert data == want, (name, shape, axes)


def _written(x, axes, scratch_bytes, part):
    """The pieces of one share put at their offsets in a buffer of the permuted size, and which
    bytes they wrote (a byte written twice fails)."""
    out, seen = np.zeros(x.nbytes, np.uint8), np.zeros(x.nbytes, bool)
    for offset, block in transpose.permuted_pieces(x, axes, np.empty(scratch_bytes, np.uint8), part):
        assert block.dtype == np.uint8 and block.ndim == 1
        assert 0 <= offset and offset + len(block) <= x.nbytes
        assert not seen[offset:offset + len(block)].any(), "a byte comes twice"
        seen[offset:offset + len(block)] = True
        out[offset:offset + len(block)] = block
    return out, seen


def _joined(x, axes, scratch_bytes, part):
    out, seen = _written(x, axes, scratch_bytes, part)
    assert seen.all(), "a byte is missing"
    return out.tobytes()


@pytest.mark.parametrize("parts", [1, 2, 3, 7, 64])
@pytest.mark.parametrize("scratch_bytes", [1, 700, 1 << 14, 1 << 20])
def test_shares_of_pieces_cover_every_byte_once(kernel, parts, scratch_bytes):
    """The n shares of a tensor, each in pieces in any order, give the permuted bytes exactly
    (more shares than rows: some shares are empty)."""
    cases = [((512, 64, 5), (2, 1, 0)), ((5, 64, 512), (2, 1, 0)), ((64, 32, 3, 3), (2, 3, 1, 0)),
             ((3, 3, 32, 64), (3, 2, 0, 1)), ((16, 8, 3, 3, 3), (2, 3, 4, 1, 0)),
             ((300, 70), (1, 0)), ((40, 7), (0, 1)), ((3, 1, 5), (1, 0, 2)),
             ((37, 29, 7), (2, 1, 0)), ((9, 29, 37), (2, 1, 0)), ((70, 13, 9), (2, 1, 0))]
    for shape, axes in cases:
        for dtype in (np.float32, np.float16):
            x = _raw(shape, dtype)
            want = np.frombuffer(np.ascontiguousarray(x.transpose(axes)).tobytes(), np.uint8)
            joined, seen = np.zeros(x.nbytes, np.uint8), np.zeros(x.nbytes, bool)
            for k in range(parts):
                out, wrote = _written(x, axes, scratch_bytes, (k, parts))
                assert not (seen & wrote).any(), "two shares wrote the same byte"
                joined[wrote], seen = out[wrote], seen | wrote
            assert seen.all() and np.array_equal(joined, want), (shape, axes, dtype)


def test_a_share_out_of_range_is_refused():
    with pytest.raises(ValueError, match="no share"):
        list(transpose.permuted_pieces(np.zeros((4, 4)), (1, 0), np.empty(64, np.uint8), (2, 2)))


def test_conv_kernels_are_cut_where_the_source_stays_contiguous():
    """A Conv1d/2d kernel on its way to Keras is cut along ``in``, not along k (which would read
    one element of every k); on its way back, and a Linear, along the first output axis."""
    def axis(shape, axes, dtype=np.float32):
        view = np.zeros(shape, dtype).transpose(axes)
        return transpose.split_axis(*transpose.simplify(view.shape, view.strides),
                                    view.itemsize, 1 << 20)
    assert axis((512, 512, 5), (2, 1, 0)) == 1            # (k, in, out): in
    assert axis((256, 256, 3, 3), (2, 3, 1, 0), np.float16) == 1   # (k*k, in, out): in
    assert axis((5, 512, 512), (2, 1, 0)) == 0            # back to (out, in, k)
    assert axis((4096, 2048), (1, 0)) == 0


@pytest.mark.skipif(transpose._transpose is None, reason="C kernel not built")
@pytest.mark.parametrize("item", [1, 2, 4, 8, 16])
def test_the_c_kernel_copies_any_strided_view(item):
    """Views no reader makes (the source contiguous along no axis, gaps, an offset) still copy
    exactly: the kernel falls back to its strided loop."""
    rng = np.random.default_rng(item)
    src = rng.integers(0, 256, 1 << 16, np.uint8)
    for _ in range(40):
        nd = int(rng.integers(1, 5))
        shape = tuple(int(n) for n in rng.integers(1, 12, nd))
        strides = tuple(int(s) * item for s in rng.integers(1, 40, nd))
        offset = int(rng.integers(0, 64)) * item
        if offset + sum((n - 1) * s for n, s in zip(shape, strides)) + item > len(src):
            continue
        view = np.lib.stride_tricks.as_strided(src[offset:].view(f"V{item}"), shape, strides)
        dst = np.zeros(view.nbytes, np.uint8)
        transpose._transpose.permute(src, offset, dst, shape, strides, item)
        assert dst.tobytes() == np.ascontiguousarray(view).tobytes(), (shape, strides, offset)
