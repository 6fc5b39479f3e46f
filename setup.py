"""Builds the optional transpose kernel; everything else is in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and
transcoder.rules.transpose falls back to numpy (slower, same bytes).
"""
from setuptools import Extension, setup

setup(ext_modules=[Extension("transcoder.rules._transpose", ["transcoder/rules/_transpose.c"],
                             extra_compile_args=["-O3"], optional=True)])
