"""Bulk migration: convert a tree of checkpoints in parallel, resumably (``transcode bulk``).

Modules: :mod:`.tree` (what to convert, where outputs go), :mod:`.task` (the per-file task
that runs in a worker), :mod:`.manifest` (the JSON Lines record that makes runs resumable),
:mod:`.engines` (serial, local process pool, Ray), :mod:`.runner` (the run itself) and
:mod:`.display` (progress bar and summary).
"""
from .runner import BulkOptions, BulkReport, run_bulk
from .tree import TARGETS

__all__ = ["BulkOptions", "BulkReport", "run_bulk", "TARGETS"]
