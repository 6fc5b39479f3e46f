"""Same input, same bytes: what Keras' own savers would stamp with the time, left out.

``model.save("x.keras")`` writes ``metadata.json`` with ``date_saved`` and zip members dated
now: two conversions of one file differed, and so did their checksums, caches and a resumed
``bulk --checksums``. :func:`fixed_zip_times` rewrites a saved ``.keras`` with its members
dated 1980-01-01 (the zip epoch) and ``date_saved`` at the same instant. (Keras'
``.weights.h5`` carries no times already; our own ``.h5`` writer turns HDF5's off.)
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

EPOCH = (1980, 1, 1, 0, 0, 0)
DATE_SAVED = "1980-01-01@00:00:00"


def fixed_zip_times(path: Path) -> None:
    """Rewrite the zip at ``path`` (a ``.keras`` we just saved) with fixed member times and a
    fixed ``date_saved``; members, order and compression unchanged."""
    path = Path(path)
    tmp = path.with_name(path.name + ".untimed")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(tmp, "w") as dst:
        for info in src.infolist():
            data = src.read(info)
            if info.filename == "metadata.json":
                data = _fixed_metadata(data)
            member = zipfile.ZipInfo(info.filename, date_time=EPOCH)
            member.compress_type, member.external_attr = info.compress_type, info.external_attr
            dst.writestr(member, data)
    os.replace(tmp, path)


def _fixed_metadata(data: bytes) -> bytes:
    try:
        meta = json.loads(data)
    except ValueError:
        return data
    if isinstance(meta, dict) and "date_saved" in meta:
        meta["date_saved"] = DATE_SAVED
        return json.dumps(meta).encode()
    return data
