"""Planning Keras layers to PyTorch from the classes and configs a file states (no framework).

The readers keep each layer's class and config (``meta["keras_layers"]``); the plan lets the
class decide the family, records the config's hyper-parameters for the check, and refuses
what PyTorch cannot compute. Checked here on checkpoints built in memory.
"""
from __future__ import annotations

import numpy as np
import pytest

from transcoder.checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef
from transcoder.errors import UnsupportedError
from transcoder.rules import load_user_rules, make_plan


def keras_ckpt(*layers: tuple[str, str | None, dict | None, dict[str, tuple]]) -> Checkpoint:
    """Layers ``(name, class, config or None, {weight: shape})`` as a reader gives them."""
    tensors, meta = {}, []
    for name, cls, config, weights in layers:
        entry = {"name": name, "class_name": cls, "weights": list(weights)}
        if config is not None:
            entry["config"] = {"name": name, **config}
        meta.append(entry)
        for weight, shape in weights.items():
            tensors[f"{name}/{weight}"] = TensorRef.from_array(
                f"{name}/{weight}", np.ones(shape, np.float32))
    return Checkpoint(tensors, LAYOUT_KERAS, meta={"keras_layers": meta})


def plan_of(*layers, rules=None):
    return make_plan(keras_ckpt(*layers), LAYOUT_TORCH, rules)


KB = {"kernel": (4, 4), "bias": (4,)}
RNN = {"kernel": (3, 16), "recurrent_kernel": (4, 16), "bias": (16,)}
GRU = {"kernel": (3, 12), "recurrent_kernel": (4, 12), "bias": (2, 12)}


@pytest.mark.parametrize("cls, config, weights, expected", [
    ("BatchNormalization", {"epsilon": 0.001, "momentum": 0.99},
     {"gamma": (4,), "beta": (4,), "moving_mean": (4,), "moving_variance": (4,)},
     {"eps": 0.001, "momentum": 0.01}),
    ("GroupNormalization", {"groups": -1, "epsilon": 1e-5}, {"gamma": (6,), "beta": (6,)},
     {"eps": 1e-5, "num_groups": 6}),                                 # -1: one group per channel
    ("Conv1D", {"groups": 2}, {"kernel": (3, 2, 4), "bias": (4,)}, {"groups": 2}),
    ("Conv2D", {}, {"kernel": (3, 3, 2, 4)}, {"groups": 1}),          # Keras 2: no groups key
    ("SimpleRNN", {"units": 4, "activation": "relu"},
     {"kernel": (3, 4), "recurrent_kernel": (4, 4), "bias": (4,)},
     {"hidden_size": 4, "nonlinearity": "relu"}),
    ("GRU", {"units": 4, "reset_after": True}, GRU, {"hidden_size": 4, "reset_after": True}),
    ("MultiHeadAttention", {"num_heads": 2},
     {f"{p}/{w}": ((4, 2, 2) if w == "kernel" else (2, 2)) for p in ("query", "key", "value")
      for w in ("kernel", "bias")} | {"attention_output/kernel": (2, 2, 4),
                                      "attention_output/bias": (4,)}, {"num_heads": 2}),
    ("Conv1D", {"groups": "two", "activation": {"config": "relu"}}, {"kernel": (3, 2, 4)}, {}),
    ("LayerNormalization", {"epsilon": -1.0}, {"gamma": (4,), "beta": (4,)}, {}),  # corrupt
])
def test_the_config_gives_the_options_the_check_builds_with(cls, config, weights, expected):
    plan = plan_of(("layer", cls, config, weights))
    assert plan.options.get("layer", {}) == expected
    assert not plan.ambiguous


def test_the_class_decides_where_the_weights_alone_are_ambiguous():
    norm = {"gamma": (4,), "beta": (4,)}
    assert plan_of(("n", None, None, norm)).ambiguous["n"][0] == "LayerNormalization"
    for cls, rule in (("GroupNormalization", "GroupNorm"), ("LayerNormalization", "LayerNorm")):
        plan = plan_of(("n", cls, {"epsilon": 1e-3}, norm))
        assert not plan.ambiguous and plan.layers["n"].rule == rule


def test_wrappers_are_planned_by_the_class_they_wrap():
    bi = {f"{d}/{w}": shape for d in ("forward", "backward") for w, shape in RNN.items()}
    config = {"layer": {"class_name": "LSTM", "config": {"name": "lstm", "units": 4}}}
    plan = plan_of(("bi", "Bidirectional", config, bi), ("td", "TimeDistributed", {
        "layer": {"class_name": "Dense", "config": {"name": "dense", "units": 4}}}, KB))
    assert plan.layers["bi"].rule == "LSTM" and plan.options["bi"] == {"hidden_size": 4}
    assert plan.layers["td"].rule == "Linear"
    assert [s.torch for s in plan.steps if s.layer == "td"] == [("td.weight",), ("td.bias",)]


@pytest.mark.parametrize("cls, what", [
    ("my_pkg>Scaler", "is a my_pkg>Scaler, a class from another package (never imported): "
                      "no rule knows what it computes"),
    ("EinsumDense", "is a Keras EinsumDense, which no rule maps yet"),
])
def test_a_class_no_rule_maps_is_an_error_never_a_guess_from_its_weights(cls, what):
    """Kernel and bias of a Dense's shapes: inference would say Dense; the class says no."""
    with pytest.raises(UnsupportedError) as err:
        plan_of(("d", "Dense", {}, KB), ("x", cls, {}, KB))
    assert f"Keras layer 'x' {what} (weights kernel, bias)" in str(err.value)
    assert '[[layer]] match = "x", kind = "carry"' in str(err.value)
    assert '[[tensor]] keras = "x/kernel"' in str(err.value)


@pytest.mark.parametrize("cls, config, weights, why", [
    ("LSTM", {"recurrent_activation": "hard_sigmoid"}, RNN,
     "recurrent_activation='hard_sigmoid': PyTorch's LSTM gates are sigmoid"),
    ("LSTM", {"activation": "relu"}, RNN, "activation='relu'"),
    ("GRU", {"reset_after": False}, {"kernel": (3, 12), "recurrent_kernel": (4, 12)},
     "reset_after=False"),                                    # no bias to show it: the config does
    ("GRU", {}, {"kernel": (3, 12), "recurrent_kernel": (4, 12), "bias": (12,)},
     "reset_after=False"),                                    # Keras before 2.1.3: no such key
    ("SimpleRNN", {"activation": "sigmoid"},
     {"kernel": (3, 4), "recurrent_kernel": (4, 4), "bias": (4,)}, "activation='sigmoid'"),
    ("LayerNormalization", {"rms_scaling": True}, {"gamma": (4,)}, "rms_scaling=True"),
    ("Bidirectional", {"layer": {"class_name": "LSTM", "config": {
        "name": "l", "recurrent_activation": "hard_sigmoid"}}},
     {f"{d}/{w}": s for d in ("forward", "backward") for w, s in RNN.items()}, "hard_sigmoid"),
])
def test_configs_pytorch_cannot_compute_are_refused(cls, config, weights, why):
    with pytest.raises(UnsupportedError, match="would compute something else") as err:
        plan_of(("layer", cls, config, weights))
    assert why in str(err.value)


def test_without_a_config_the_class_alone_refuses_nothing():
    """A checkpoint that knows classes but no configs (a twin, our own files) says nothing
    about activations: nothing is refused for what it does not say."""
    assert plan_of(("g", "GRU", None, GRU)).layers["g"].rule == "GRU"


def test_rules_state_the_kind_of_a_refused_layer_and_the_plan_says_so(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[layer]]\nmatch = "l"\nkind = "LSTM"\n')
    plan = plan_of(("l", "LSTM", {"recurrent_activation": "hard_sigmoid", "units": 4}, RNN),
                   rules=load_user_rules(rules))
    assert plan.layers["l"].rule == "LSTM" and plan.options["l"] == {"hidden_size": 4}
    assert any("hard_sigmoid" in note and "outputs will differ" in note for note in plan.notes)


def test_rules_options_of_a_keras_layer_reach_the_check(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[layer]]\nmatch = "n"\nkind = "GroupNorm"\nnum_groups = 2\n')
    plan = plan_of(("n", None, None, {"gamma": (4,), "beta": (4,)}), rules=load_user_rules(rules))
    assert plan.options["n"] == {"num_groups": 2} and not plan.ambiguous


def test_a_wrapper_whose_config_does_not_say_what_it_wraps_goes_by_its_weights():
    bi = {f"{d}/{w}": shape for d in ("forward", "backward") for w, shape in RNN.items()}
    for config in (None, {}, {"layer": {"class_name": 3, "config": {"name": "x"}}}):
        plan = plan_of(("bi", "Bidirectional", config, bi))
        assert plan.layers["bi"].rule == "LSTM" and plan.options == {}
