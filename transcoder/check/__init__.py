"""The forward check: prove a converted model computes what the original does.

- :func:`check_layers`: weights only (no architecture): every mapped layer built on both sides
  from its rule family and shapes, loaded with the original and the mapped tensors, compared.
- :func:`check_models`: a PyTorch module and a Keras model on the same seeded inputs, every
  output compared, the first diverging paired layer named.
- :class:`CheckReport`: ``passed``, ``exit_code``, ``write_json``, ``write_junit``;
  :func:`print_table` draws it with rich.

Importing this package imports neither torch nor tensorflow: the checks import them when run.
"""
from .compare import (DEFAULT_TOLERANCES, FAIL, INACCURATE, SKIPPED, SUCCESS, Comparison, compare,
                      default_tolerance, resolve_tolerance)
from .layers import BUILDERS, check_layers
from .models import (InputSpec, check_models, default_pairs, make_inputs, parse_input_specs,
                     parse_shape)
from .report import CheckReport, library_versions, print_table

__all__ = ["DEFAULT_TOLERANCES", "FAIL", "INACCURATE", "SKIPPED", "SUCCESS", "Comparison",
           "compare", "default_tolerance", "resolve_tolerance", "BUILDERS", "check_layers",
           "InputSpec", "check_models", "default_pairs", "make_inputs", "parse_input_specs",
           "parse_shape", "CheckReport", "library_versions", "print_table"]
