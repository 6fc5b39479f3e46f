"""The manifest of a DST_DIR that is a bucket (``s3://b/out``): object stores cannot append.

Each record is appended to a local journal first (the plain :class:`.manifest.Manifest` of a
private folder, ``$XDG_CACHE_HOME/transcoder/bulk/<hash of the URL>``, fsynced line by line
and locked: one run per destination on this machine), then the whole manifest is rewritten
as the object ``DST_DIR/transcode-manifest.jsonl`` through a temporary key and a move (never
seen half-written): after a record when the last rewrite is at least :data:`PUBLISH_EVERY`
seconds old, else with a later one, and always when the run ends. A record is only written
after its output is published, so what it says done is in the bucket.

A rerun reads the object, then the journal over it (the lines a killed run recorded here
but had not rewritten yet), and trusts only entries whose output the bucket still holds as
recorded (:mod:`.bucket`); a stale line costs a redo, never a wrong skip.
"""
from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

from ..errors import UsageError
from ..remote import filesystem, join, publish_file
from .manifest import NAME, Manifest, _entry

#: seconds between two rewrites of the manifest object while a run records results
PUBLISH_EVERY = 1.0


def journal_folder(dst_url: str) -> Path:
    """The private local folder of a bucket destination (its journal and its lock)."""
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    digest = hashlib.sha256(dst_url.rstrip("/").encode()).hexdigest()[:24]
    folder = base / "transcoder" / "bulk" / digest
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        (folder / "destination.txt").write_text(dst_url + "\n")
    except OSError as exc:
        raise UsageError(f"cannot create the local journal: {exc.strerror or exc}",
                         path=folder) from None
    return folder


class BucketManifest(Manifest):
    """A :class:`Manifest` journaled locally and published as an object under ``dst_url``."""

    def __init__(self, dst_url: str) -> None:
        self.url = join(dst_url, NAME)
        self._published = 0.0
        self._dirty = False
        self._publishing = threading.Lock()
        super().__init__(journal_folder(dst_url))

    @property
    def where(self) -> str:
        return self.url

    def _load(self) -> None:
        for line in _read_object(self.url).splitlines():
            entry = _entry(line)
            if entry is None:
                self.unreadable_lines += 1
            else:
                self.entries[(entry["source"], entry["output"])] = entry
        super()._load()   # the journal over it: what a killed run here had not published

    def append(self, record: dict) -> dict:
        entry = super().append(record)
        self._dirty = True
        if time.monotonic() - self._published >= PUBLISH_EVERY:
            self.publish()
        return entry

    def compact(self) -> None:
        super().compact()
        self._dirty = True
        self.publish()

    def publish(self) -> None:
        """Rewrite the manifest object from the journal (temporary key, then move)."""
        with self._publishing:
            if self._dirty:
                publish_file(self.path, self.url)
                self._dirty, self._published = False, time.monotonic()


def _read_object(url: str) -> bytes:
    fs, path = filesystem(url)
    try:
        return fs.cat_file(path)
    except FileNotFoundError:
        return b""
    except OSError as exc:
        raise UsageError(f"cannot read the manifest: {exc.strerror or exc}", path=url) from None
