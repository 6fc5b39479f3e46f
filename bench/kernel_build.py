"""Whether the permutation kernel that ``transcoder`` imports was built from the
``_transpose.c`` beside it. A build left over from an older source (the ``.so`` is built in
place and git-ignored, so a merge does not rebuild it) benchmarks the old kernel.

    python bench/kernel_build.py     # prints the state; exit status 1 if the build is stale
"""
from __future__ import annotations

import hashlib
import sys
from pathlib import Path

REBUILD = "python setup.py build_ext --inplace"


def state() -> tuple[bool, str]:
    """(usable for benchmarks, a one-line description)."""
    from transcoder.rules import transpose
    kernel = transpose._transpose
    if kernel is None:
        return True, "numpy fallback (the C kernel is not built)"
    source = Path(transpose.__file__).with_name("_transpose.c")
    if not source.exists():
        return True, f"C, installed ({kernel.__file__}; no source beside it to compare)"
    built = getattr(kernel, "SOURCE_SHA256", None)
    if built != hashlib.sha256(source.read_bytes()).hexdigest():
        return False, (f"STALE: {kernel.__file__} was not built from {source}; "
                       f"rebuild it ({REBUILD})")
    return True, f"C, built from {source}"


if __name__ == "__main__":
    ok, text = state()
    print(text)
    sys.exit(0 if ok else 1)
