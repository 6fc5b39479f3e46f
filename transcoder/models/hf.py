"""The architecture of a Hugging Face model folder: transformers builds it from the folder's
``config.json`` (``AutoModel.from_config``), the way ``--model`` builds the user's module.

Never remote code (``trust_remote_code=False``: a config naming its own classes is refused),
never a download (``local_files_only``). The model is called with its main input alone, by
position (``input_ids`` int64, ``pixel_values``, ``input_values``, ``input_features``), plus the
decoder ids an encoder-decoder needs; it returns what transformers returns (a ``ModelOutput``,
the last hidden state first). :func:`default_inputs` gives that input a shape from the config,
which ``--input-shape`` overrides.
"""
from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import Any

from ..errors import MissingDependencyError, UsageError, one_line
from ..options import InputOptions

PREFIX = "hf:"
#: token ids fed by default: a short sequence
SEQUENCE = 16
#: decoder ids an encoder-decoder (Whisper) is fed beside its main input
DECODER_IDS = 4


def available() -> bool:
    """Are transformers, torch and Keras installed (without importing them)?"""
    return all(importlib.util.find_spec(name) is not None
               for name in ("transformers", "torch", "keras"))


def knows(config: dict[str, Any]) -> bool:
    """Does transformers have a built-in architecture for this config's ``model_type``?"""
    _transformers()
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return config.get("model_type") in CONFIG_MAPPING_NAMES


def spec_for(folder: Path | str) -> str:
    """The ``--model`` spec standing for a model folder's own architecture."""
    return f"{PREFIX}{folder}"


def _transformers():
    os.environ.setdefault("USE_TF", "0")       # or transformers imports TensorFlow as well
    try:
        import transformers
    except ImportError:
        raise MissingDependencyError("building a Hugging Face architecture needs transformers",
                                     hint="pip install 'transcoder[hf]'") from None
    return transformers


def build(folder: Path | str):
    """The folder's model with random weights, ready for a strict load; its forward takes the
    main input (and decoder ids) by position."""
    transformers = _transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True,
                                                         trust_remote_code=False)
        config.use_cache = False   # a forward check needs no key/value cache (nor a trace of it)
        model = transformers.AutoModel.from_config(config, trust_remote_code=False)
    except Exception as exc:  # noqa: BLE001 - transformers' refusals are the config's problem
        raise UsageError(f"transformers cannot build this config ({one_line(exc)})", path=folder,
                         hint="pass --model with your own module") from None
    _positional(model, input_names(model))
    return model.eval()


def input_names(model) -> list[str]:
    names = [getattr(model, "main_input_name", "input_ids")]
    if getattr(model.config, "is_encoder_decoder", False):
        names.append("decoder_input_ids")
    return names


def _positional(model, names: list[str]) -> None:
    """Make ``model(*inputs)`` mean ``model(**dict(zip(names, inputs)))`` where the forward's
    own positional order differs (an encoder-decoder's ``decoder_input_ids`` comes third);
    else leave the model as transformers made it (what torch.export sees unchanged)."""
    import inspect

    params = list(inspect.signature(model.forward).parameters)
    if params[:len(names)] == names:
        return
    forward = model.forward

    def by_name(*inputs, **kwargs):
        return forward(**dict(zip(names, inputs)), **kwargs)

    # the inputs keep their names (export's placeholders, the artifacts' signatures)
    by_name.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    model.forward = by_name


def default_inputs(config: dict[str, Any], main_input: str | None = None) -> InputOptions:
    """The main input's shape and dtype from the config (batch 1), in the CLI's strings."""
    name = main_input or _main_input_of(config)
    shapes, dtypes = _SHAPES.get(name, _SHAPES["input_ids"])(config)
    if config.get("is_encoder_decoder"):
        shapes.append(f"1,{DECODER_IDS}")
        dtypes.append(f"int64:{_vocab(config)}")
    return InputOptions(input_shapes=shapes, input_dtypes=dtypes)


def _vocab(config: dict[str, Any]) -> int:
    value = config.get("vocab_size")
    return value if isinstance(value, int) and value > 0 else 2


def _positions(config: dict[str, Any]) -> int:
    for key in ("max_position_embeddings", "n_positions", "max_target_positions"):
        if isinstance(config.get(key), int) and config[key] > 0:
            return min(SEQUENCE, config[key])
    return SEQUENCE


def _image(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    size = config.get("image_size", 64)
    size = size[0] if isinstance(size, list) else size
    return [f"1,{config.get('num_channels', 3)},{size},{size}"], ["float32"]


def _audio(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    strides = config.get("conv_stride") or [5, 2, 2, 2, 2, 2, 2]
    return [f"1,{SEQUENCE * math.prod(strides)}"], ["float32"]


def _features(config: dict[str, Any]) -> tuple[list[str], list[str]]:
    frames = 2 * config.get("max_source_positions", 1500)   # Whisper's encoder wants exactly this
    return [f"1,{config.get('num_mel_bins', 80)},{frames}"], ["float32"]


_SHAPES = {
    "input_ids": lambda c: ([f"1,{_positions(c)}"], [f"int64:{_vocab(c)}"]),
    "pixel_values": _image,
    "input_values": _audio,
    "input_features": _features,
}
#: model_type -> main input, for configs read without transformers
_MAIN_INPUTS = {"vit": "pixel_values", "resnet": "pixel_values", "convnext": "pixel_values",
                "deit": "pixel_values", "swin": "pixel_values", "wav2vec2": "input_values",
                "hubert": "input_values", "wavlm": "input_values", "whisper": "input_features"}


def _main_input_of(config: dict[str, Any]) -> str:
    return _MAIN_INPUTS.get(config.get("model_type"), "input_ids")
