"""How much a file may make us allocate and write, whatever it declares.

Every format can declare more tensor bytes than it stores: compressed records and datasets,
a tensor with zero strides (one float stored, 4 GiB declared), one storage or dataset named by
many tensors. Each counts as decompression, bounded by one ratio:

- each tensor may declare at most :data:`RATIO` times the bytes the file stores for it, plus
  :data:`TENSOR_FLOOR` (tiny broadcast buffers, fill-value chunks);
- all tensors of a file together at most :data:`RATIO` times the file's size, plus
  :data:`FILE_FLOOR`.

Why 100: real checkpoints expand about 1:1 (``torch.save`` and Keras store every tensor
uncompressed; a ``position_ids`` buffer of shape (1, 512) with strides (0, 1) stores all 512
values; tied weights name one storage twice); deflate gets about 1.1:1 on trained weights and
up to 1032:1 on zeros. Keras' own loader refuses zip members beyond 100:1 for the same
reason. So a conversion writes at most about 100 times what it reads, and holds at most
one tensor expanded that way at a time.
"""
from __future__ import annotations

from ...errors import UnsafeFileError

RATIO = 100
TENSOR_FLOOR = 1 << 20
FILE_FLOOR = 16 << 20


def allowed(stored: int, floor: int = TENSOR_FLOOR) -> int:
    """The most bytes something storing ``stored`` bytes may expand to."""
    return RATIO * max(stored, 0) + floor


def check_tensor(declared: int, stored: int, what: str, **context: object) -> None:
    """UnsafeFileError if ``declared`` bytes from ``stored`` exceeds the ratio."""
    if declared > allowed(stored):
        raise UnsafeFileError(f"{what} declares {declared} bytes from {stored} stored: more than "
                              f"{RATIO}:1, refusing a possible decompression or shape bomb",
                              **context)


def check_file(declared: int, file_size: int, **context: object) -> None:
    """UnsafeFileError if a file's tensors together declare more than the ratio allows."""
    if declared > allowed(file_size, FILE_FLOOR):
        raise UnsafeFileError(f"its tensors declare {declared} bytes in all, the file holds "
                              f"{file_size}: more than {RATIO}:1, refusing a possible "
                              "decompression or shape bomb", **context)
