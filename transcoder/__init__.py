"""transcoder: move neural-network weights between PyTorch and Keras, and prove they still compute the same.

The stages, and the one direction of imports between them. Layers, bottom to top; a module
imports only modules of its own layer or of lower ones (imports inside functions included,
``tests/test_structure.py`` checks it), and no two modules import each other:

  1. errors, _version, printing      the exception family; the version; printing rows
  2. checkpoint, progress            Checkpoint and lazy TensorRef: what every stage speaks;
                                     what the command shows while a stage works
  3. frameworks, options, remote     importing torch/keras quietly; the options users give;
                                     fsspec URLs staged to local paths
  4. formats, rules                  readers and writers; the rule table, ops and plans (numpy)
  5. models                          live PyTorch and Keras models, inputs, the Keras rebuild
  6. pipeline, live, export          read -> plan -> write; live models in the pipeline;
                                     SavedModel and TFLite exports of a Keras model
  7. checks                          the forward check and its report
  8. bulk, api                       a tree of checkpoints; the Python API (what the
                                     commands do, once)
  9. cli, __main__                   the ``transcode`` command: parse, call the API, print

The Python API (:mod:`.api`) is here too, loaded on first use so that ``import transcoder``
stays light (no torch, no TensorFlow): ``transcoder.convert(src, dst, ...)``,
``transcoder.inspect(path)``, ``transcoder.check(src, dst, ...)``, and
``transcoder.TranscoderError``, the base of every error it raises. Our Keras layers register
with Keras whenever Keras is imported, so a rebuilt ``.keras`` loads after ``import transcoder``.
"""
from ._version import __version__
from .errors import TranscoderError
from .models.registration import register_keras_layers_when_loaded

register_keras_layers_when_loaded()

_API = ("convert", "inspect", "check", "Conversion", "Inspection", "CheckReport", "CheckFailed")
__all__ = ["__version__", "TranscoderError", *_API]


def __dir__() -> list[str]:
    """The API too (loaded on first use), so that ``dir()`` and tab completion show it."""
    return sorted(set(globals()) | set(__all__))


def __getattr__(name: str):
    if name == "CheckFailed":
        from .errors import CheckFailed

        return CheckFailed
    if name == "CheckReport":
        from .checks.report import CheckReport

        return CheckReport
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
