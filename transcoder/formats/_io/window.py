"""A read-only, seekable raw file over ``size`` bytes, for :mod:`zipfile` and h5py: subclasses
read at ``self._pos`` (:meth:`readinto`) from wherever their bytes are."""
from __future__ import annotations

import io


class Window(io.RawIOBase):
    """Position bookkeeping of a read-only raw file of ``size`` bytes. ``CLAMP``: a seek before
    the start lands at 0 (True) or is an OSError (False)."""

    CLAMP = False

    def __init__(self, size: int) -> None:
        super().__init__()
        self._size, self._pos = size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        if base + offset < 0 and not self.CLAMP:
            raise OSError("negative seek position")
        self._pos = max(0, base + offset)
        return self._pos
