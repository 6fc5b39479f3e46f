"""Live models: the user's PyTorch module (``torch_side``), the user's Keras model
(``keras_side``), model inputs (``inputs``) and the Keras rebuild of a module (``rebuild``).

Importing this package imports neither torch nor Keras. Our few Keras layers
(``keras_layers``) register with Keras as soon as Keras is imported (now, if it already is), so
``keras.models.load_model("model.keras")`` loads a rebuilt model in any process that imported
``transcoder.models``.
"""
from __future__ import annotations

from .registration import register_keras_layers_when_loaded

register_keras_layers_when_loaded()
