"""What a Hugging Face ``config.json`` settles that tensor names leave open.

Names such as ``input_layernorm`` (a Llama: an RMSNorm) or ``conv_layers.0.layer_norm`` (a
wav2vec2 with ``feat_extract_norm="group"``: a GroupNorm with one group per channel) do not say
which normalisation computes the layer, and the kinds map to the same bytes, so a guess would
be silent. A model family's own naming does say it: each :class:`Naming` ties module paths of
some ``model_type`` values (and, where the family builds either, a config switch) to a kind,
and the config's epsilon to the module's ``eps``. Paths no naming covers are left to the names
and shapes (:mod:`.infer`). The table holds only families whose code was read for it: a family
missing here is inferred as before (the check reports what stays open), never guessed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable

from .families.norm import GROUP_NORM, LAYER_NORM, RMS_NORM

#: model_type values whose ``*_layernorm``/``norm`` modules are RMSNorm(x) * weight (not
#: Gemma's (1 + weight) scaling, which no rule computes)
RMS_DECODERS = ("llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe",
                "phi3", "granite")
WAV2VEC2_LIKE = ("wav2vec2", "hubert", "wavlm", "data2vec-audio", "unispeech", "unispeech-sat")
#: config keys holding the epsilon of a family's normalisations, in the order looked at
EPS_KEYS = ("rms_norm_eps", "layer_norm_eps", "layer_norm_epsilon", "norm_eps")


@dataclass(frozen=True)
class Naming:
    """Module paths matching ``pattern`` in a model of one of ``model_types`` are ``kind``,
    when ``config[key] == value`` for every ``(key, value)`` in ``when``."""

    model_types: tuple[str, ...]
    pattern: str
    kind: str
    when: tuple[tuple[str, Any], ...] = ()
    #: module options from the config: option -> config key (or a callable of the config)
    options: dict[str, Any] = field(default_factory=dict)

    def applies(self, config: dict[str, Any]) -> bool:
        return config.get("model_type") in self.model_types and all(
            config.get(k) == v for k, v in self.when)

    def matches(self, path: str) -> bool:
        return re.search(self.pattern, path) is not None


def _first_conv_dim(config: dict[str, Any]) -> int | None:
    dims = config.get("conv_dim")
    return dims[0] if isinstance(dims, list) and dims and isinstance(dims[0], int) else None


NAMINGS: tuple[Naming, ...] = (
    Naming(RMS_DECODERS, r"(?:^|\.)(?:input_layernorm|post_attention_layernorm|norm|q_norm|"
                         r"k_norm|pre_feedforward_layernorm|post_feedforward_layernorm)$",
           RMS_NORM.name),
    Naming(("t5", "mt5"), r"(?:^|\.)(?:layer_norm|final_layer_norm)$", RMS_NORM.name),
    # Wav2Vec2GroupNormConvLayer: nn.GroupNorm(num_groups=C, num_channels=C), first layer only
    Naming(WAV2VEC2_LIKE, r"(?:^|\.)feature_extractor\.conv_layers\.0\.layer_norm$", GROUP_NORM.name,
           when=(("feat_extract_norm", "group"),), options={"num_groups": _first_conv_dim}),
    # Wav2Vec2LayerNormConvLayer: nn.LayerNorm over the channels of every conv layer
    Naming(WAV2VEC2_LIKE, r"(?:^|\.)feature_extractor\.conv_layers\.\d+\.layer_norm$",
           LAYER_NORM.name, when=(("feat_extract_norm", "layer"),)),
)


def config_eps(config: dict[str, Any]) -> float | None:
    for key in EPS_KEYS:
        value = config.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    return None


def kinds_from_config(config: dict[str, Any], paths: Iterable[str]
                      ) -> tuple[dict[str, str], dict[str, dict[str, Any]]]:
    """``({path: kind}, {path: options})`` for the module ``paths`` the config's family naming
    decides; the rest are absent."""
    kinds: dict[str, str] = {}
    options: dict[str, dict[str, Any]] = {}
    namings = [n for n in NAMINGS if n.applies(config)]
    eps = config_eps(config)
    for path in paths:
        naming = next((n for n in namings if n.matches(path)), None)
        if naming is None:
            continue
        kinds[path] = naming.kind
        found = {k: (v(config) if callable(v) else config.get(v)) for k, v in naming.options.items()}
        if eps is not None and naming.kind in (RMS_NORM.name, LAYER_NORM.name):
            found["eps"] = eps
        options[path] = {k: v for k, v in found.items() if v is not None}
    return kinds, options
