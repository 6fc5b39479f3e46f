"""The byte-moving floor: copy SRC to DST the way the writers could at best, as a whole process.

    python bench/floor.py SRC DST          # a file, or a folder (every file in it, its tree kept)

Starts Python, imports numpy (as every conversion does), maps each source file read-only,
gives the output its size and disk blocks (``posix_fallocate``), maps it ``MAP_SHARED``, faults
its pages in for writing (``madvise(MADV_POPULATE_WRITE)``) and copies the bytes on two threads
(numpy's copy releases the GIL), half the file each. No permutation, no format: what is left of
a conversion when only its bytes move. ``bench.py`` times it beside ``cp`` for every case (the
"floor" row), so that each conversion reads against both (issue 21).

``--populate map`` asks ``MAP_POPULATE`` instead, as issue 21's experiment did: on Linux 6.x it
maps a shared file's pages read-only, every first write faults again, and here (kernel 6.18, 1
GiB, 4 interleaved runs) it took 1.98-3.01 s against 0.37-0.42 s for ``write`` (one outlier
1.93 s) and 0.30-0.42 s for ``cp``: until 2026-12-07 the floor row used it and read 2-5 x too
slow. ``--populate none`` faults pages as written. Where the kernel lacks
``MADV_POPULATE_WRITE`` (before 5.14), ``write`` falls back to ``map``.
"""
from __future__ import annotations

import argparse
import mmap
import os
import sys
import threading
from pathlib import Path

import numpy as np

THREADS = 2
MADV_POPULATE_WRITE = 23


def copy_file(src: Path, dst: Path, populate: str = "map") -> None:
    size = src.stat().st_size
    with open(src, "rb") as fin, open(dst, "wb+") as fout:
        if size == 0:
            return
        os.posix_fallocate(fout.fileno(), 0, size)
        source = mmap.mmap(fin.fileno(), size, prot=mmap.PROT_READ)
        target = _map_output(fout.fileno(), size, populate)
        a, b = np.frombuffer(source, np.uint8), np.frombuffer(target, np.uint8)
        cuts = [size * k // THREADS for k in range(THREADS + 1)]
        threads = [threading.Thread(target=np.copyto, args=(b[lo:hi], a[lo:hi]))
                   for lo, hi in zip(cuts, cuts[1:])]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        del a, b
        target.close()
        source.close()


def _map_output(fd: int, size: int, populate: str) -> mmap.mmap:
    if populate == "write":
        target = mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        try:
            target.madvise(MADV_POPULATE_WRITE)
            return target
        except OSError:   # EINVAL before Linux 5.14
            target.close()
            populate = "map"
    flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate == "map" else 0)
    return mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ | mmap.PROT_WRITE)


def copy_tree(src: Path, dst: Path, populate: str) -> None:
    if src.is_file():
        copy_file(src, dst, populate)
        return
    for path in sorted(src.rglob("*")):
        out = dst / path.relative_to(src)
        if path.is_dir():
            out.mkdir(parents=True, exist_ok=True)
        elif path.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            copy_file(path, out, populate)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", type=Path)
    parser.add_argument("dst", type=Path)
    parser.add_argument("--populate", choices=("write", "map", "none"), default="write",
                        help="madvise(MADV_POPULATE_WRITE) (default), MAP_POPULATE, or none")
    args = parser.parse_args(argv)
    copy_tree(args.src, args.dst, args.populate)
    return 0


if __name__ == "__main__":
    sys.exit(main())
