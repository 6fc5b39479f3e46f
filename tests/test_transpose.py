"""The permutation kernel (C, with a numpy fallback): bit-exact against numpy's transpose for
every dtype size, axis order and block size, and safe against wrong calls."""
import itertools

import numpy as np
import pytest

from transcoder.rules import transpose

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
