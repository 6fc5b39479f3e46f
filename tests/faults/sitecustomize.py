"""Test-only fault injection for `transcode bulk` workers (tests/test_bulk.py).

Put this folder on PYTHONPATH and set TRANSCODER_TEST_FAULTS, e.g. ``crash=bad.pt,hang=slow.pt``:
every Python process started then imports this module at start-up (`transcode bulk` itself,
whose forked workers inherit it; spawned and Ray workers import it themselves), and
converting a source whose file name is listed segfaults (``crash``) or sleeps for an hour
(``hang``) instead, as a corrupted HDF5 file can make the HDF5 C library do. Nothing in
transcoder itself knows about it.
"""
import os

_FAULTS = os.environ.get("TRANSCODER_TEST_FAULTS")

if _FAULTS:
    import signal
    import time
    from pathlib import Path

    import transcoder.bulk.task as _task

    _BY_NAME = {name: kind for kind, name in (item.split("=", 1) for item in _FAULTS.split(","))}
    _conversion = _task.conversion

    def _faulty_conversion(src, dst, **kwargs):
        fault = _BY_NAME.get(Path(src).name)
        if fault == "crash":
            os.kill(os.getpid(), signal.SIGSEGV)
        if fault == "hang":
            time.sleep(3600)
        return _conversion(src, dst, **kwargs)

    _task.conversion = _faulty_conversion
