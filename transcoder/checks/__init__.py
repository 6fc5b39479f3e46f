"""The forward check: prove a converted model computes what the original does.

By concept:
- :mod:`.compare`: one comparison (tolerances, errors, a status) and the settings a check's
  comparisons share (:class:`CompareSettings`).
- :mod:`.run`: running both models of a full-model check on the same inputs.
- :mod:`.models`: the full-model check (:func:`check_models`).
- :mod:`.localise`: which paired layer first diverges.
- :mod:`.layers`: the per-layer check of a weights-only conversion (:func:`check_layers`),
  with each family's builder (``LayerRule.check``); :mod:`.proven`: one layer per class checked
  numerically, the others of the class by their written bytes.
- :mod:`.report`: :class:`CheckReport` (``passed``, ``exit_code``, JSON, JUnit); :mod:`.display`
  prints it (a table on a terminal, plain lines in a log).
- :mod:`.artifacts`: an exported SavedModel or TFLite flatbuffer run as deployed, in the
  Keras model's place (:class:`~.artifacts.ArtifactCheck`).
- :mod:`.verify`: the check as the commands run it, and when it runs (:func:`decide`).

Model inputs are :mod:`transcoder.models.inputs`. Importing this package imports neither
torch nor tensorflow: the checks import them when run.
"""
from .compare import (DEFAULT_TOLERANCES, FAIL, INACCURATE, NOT_CHECKED, SKIPPED, SUCCESS,
                      Comparison, CompareSettings, compare, default_tolerance, resolve_tolerance)
from .layers import check_layers
from .localise import default_pairs
from .models import check_models
from .display import print_table
from .report import CheckReport, library_versions

__all__ = ["DEFAULT_TOLERANCES", "FAIL", "INACCURATE", "NOT_CHECKED", "SKIPPED", "SUCCESS",
           "Comparison",
           "CompareSettings", "compare", "default_tolerance", "resolve_tolerance",
           "check_layers", "default_pairs", "check_models", "CheckReport", "library_versions",
           "print_table"]
