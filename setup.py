"""Builds the optional transpose kernel; everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and
transcoder.rules.transpose falls back to numpy (slower, same bytes).
"""
import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "transcoder/rules/_transpose.c"
# the module records which source it was built from, so that a stale build is noticed
DIGEST = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension("transcoder.rules._transpose", [SOURCE], extra_compile_args=["-O3"],
                             define_macros=[("SOURCE_SHA256", f'"{DIGEST}"')], optional=True)])
