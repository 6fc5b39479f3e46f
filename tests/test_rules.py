"""The rule table, layer-kind inference, user rules and plans, on in-memory checkpoints."""
from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

from conftest import assert_bit_exact
from transcoder.checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint, TensorRef
from transcoder.errors import AmbiguousError, MappingError, UsageError
from transcoder.rules import load_user_rules, make_plan
from transcoder.rules.ops import Permute, op_from_spec
from transcoder.rules.registry import TABLE

rng = np.random.default_rng(0)


def ckpt_of(arrays: dict, layout: str = LAYOUT_TORCH) -> Checkpoint:
    return Checkpoint({k: TensorRef.from_array(k, v) for k, v in arrays.items()}, layout)


def rand(*shape, dtype=np.float32) -> np.ndarray:
    return rng.standard_normal(shape).astype(dtype)


def kinds(plan) -> dict:
    return {layer.name: layer.class_name for layer in plan.layers.values()}


def test_every_permutation_inverts_exactly():
    for rule in TABLE:
        for param in rule.params:
            if isinstance(param.op, Permute):
                x = rand(*range(2, 2 + len(param.op.axes)))
                (y,) = param.op.forward([x])
                assert_bit_exact(param.op.inverse([y])[0], x, f"{rule.name}.{param.torch}")
                assert list(y.shape) == list(param.op.forward_shapes([x.shape])[0])
                assert op_from_spec(param.op.spec()) == param.op


def test_conv1d_permutation_matches_design_table():
    w = rand(64, 128, 1)
    target = make_plan(ckpt_of({"conv1d_U.weight": w}), LAYOUT_KERAS).apply(ckpt_of({"conv1d_U.weight": w}))
    kernel = target["conv1d_U/kernel"].load()
    assert kernel.shape == (1, 128, 64)
    assert_bit_exact(kernel, np.transpose(w, (2, 1, 0)))


@pytest.mark.parametrize("names, shapes, expected", [
    (("fc.weight", "fc.bias"), ((4, 6), (4,)), "Dense"),
    (("conv.weight", "conv.bias"), ((4, 6, 3), (4,)), "Conv1D"),
    (("conv.weight",), ((4, 6, 3, 3),), "Conv2D"),
    (("c.weight",), ((4, 6, 3, 3, 3),), "Conv3D"),
    (("deconv.weight",), ((4, 6, 2, 2),), "Conv2DTranspose"),
    (("up.weight", "up.bias"), ((8, 6, 4), (6,)), "Conv1DTranspose"),    # bias: out = axis 1
    (("up.weight", "up.bias"), ((6, 6, 4), (6,)), "Conv1D"),             # either: a Conv
    (("pre.weight_g", "pre.weight_v", "pre.bias"), ((8, 1, 1), (8, 4, 3), (8,)), "Conv1D"),
    (("up.weight", "up.weight_g", "up.weight_v", "up.bias"), ((8, 6, 4),) * 3 + ((6,),), None),
    (("tok_embeddings.weight",), ((100, 8),), "Embedding"),
    (("lm_head.weight",), ((100, 8),), "Dense"),
    (("bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"), ((5,), (5,), (5,), (5,)),
     "BatchNormalization"),
    (("norm.weight", "norm.bias"), ((5,), (5,)), "LayerNormalization"),
    (("gn.weight", "gn.bias"), ((5,), (5,)), "GroupNormalization"),
    (("ln.weight", "ln.bias"), ((3, 5), (3, 5)), "LayerNormalization"),
    (("act.weight",), ((5,),), "PReLU"),
])
def test_kind_inference(names, shapes, expected):
    plan = make_plan(ckpt_of({n: rand(*s) for n, s in zip(names, shapes)}), LAYOUT_KERAS)
    assert list(kinds(plan).values()) == ([expected] if expected else [])


def test_bias_free_2d_weight_without_a_telling_name_is_ambiguous():
    with pytest.raises(AmbiguousError) as err:
        make_plan(ckpt_of({"blocks.3.weight": rand(10, 4)}), LAYOUT_KERAS)
    assert "blocks.3.weight" in str(err.value) and "--rules" in str(err.value)


def test_user_rules_resolve_ambiguity_and_map_tensors(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[layer]]\nmatch = "blocks.*"\nkind = "Embedding"\n\n'
                     '[[tensor]]\ntorch = "head.scale"\nkeras = "head/gamma"\n\n'
                     '[[tensor]]\ntorch = "mix"\nkeras = "mixer/kernel"\npermute = [1, 0]\n')
    src = ckpt_of({"blocks.3.weight": rand(10, 4), "head.scale": rand(4), "mix": rand(2, 3)})
    plan = make_plan(src, LAYOUT_KERAS, load_user_rules(rules))
    out = plan.apply(src)
    assert_bit_exact(out["blocks.3/embeddings"].load(), src["blocks.3.weight"].load())
    assert_bit_exact(out["head/gamma"].load(), src["head.scale"].load())
    assert_bit_exact(out["mixer/kernel"].load(), src["mix"].load().T)


def test_user_rules_reject_unknown_kind(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[layer]]\nmatch = "x"\nkind = "Conv9d"\n')
    with pytest.raises(UsageError, match="Conv9d"):
        load_user_rules(rules)


def test_declared_kind_that_does_not_fit_the_shape_names_the_tensor(tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[[layer]]\nmatch = "enc"\nkind = "Conv2d"\n')
    with pytest.raises(MappingError) as err:
        make_plan(ckpt_of({"enc.weight": rand(4, 3, 2)}), LAYOUT_KERAS, load_user_rules(rules))
    assert "enc.weight" in str(err.value)


def test_unknown_tensors_and_buffers_are_carried():
    src = ckpt_of({"cls_token": rand(1, 1, 8), "bn.weight": rand(3), "bn.bias": rand(3),
                   "bn.running_mean": rand(3), "bn.running_var": rand(3),
                   "bn.num_batches_tracked": np.array(7, np.int64),
                   "embeddings.position_ids": np.arange(5, dtype=np.int64)[None]})
    plan = make_plan(src, LAYOUT_KERAS)
    assert set(plan.carried) == {"cls_token", "bn.num_batches_tracked", "embeddings.position_ids"}
    out = plan.apply(src)
    assert out.meta["carried"] == plan.carried
    assert_bit_exact(out["cls_token"].load(), src["cls_token"].load())


DTYPES = [np.float32, np.float16, np.float64, ml_dtypes.bfloat16]


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_to_keras_and_back_replays_bit_exact(dtype):
    arrays = {"conv.weight": rand(4, 2, 3, 3, dtype=dtype), "conv.bias": rand(4, dtype=dtype),
              "fc.weight": rand(5, 4, dtype=dtype), "fc.bias": rand(5, dtype=dtype),
              "tok_emb.weight": rand(9, 4, dtype=dtype),
              "bn.weight": rand(4, dtype=dtype), "bn.bias": rand(4, dtype=dtype),
              "bn.running_mean": rand(4, dtype=dtype), "bn.running_var": rand(4, dtype=dtype),
              "bn.num_batches_tracked": np.array(3, np.int64), "scale": rand(2, dtype=dtype)}
    src = ckpt_of(arrays)
    keras = make_plan(src, LAYOUT_KERAS).apply(src)
    assert keras.layout == LAYOUT_KERAS
    back = make_plan(keras, LAYOUT_TORCH).apply(keras)
    assert list(back.tensors) == list(arrays)
    for name, array in arrays.items():
        assert_bit_exact(back[name].load(), array, name)


def test_keras_written_weights_map_to_torch_names_by_class():
    keras = ckpt_of({"dense/kernel": rand(4, 5), "dense/bias": rand(5),
                     "conv/kernel": rand(3, 2, 4), "norm/gamma": rand(4), "norm/beta": rand(4)},
                    LAYOUT_KERAS)
    keras.meta["keras_layers"] = [
        {"name": "dense", "class_name": "Dense", "weights": ["kernel", "bias"]},
        {"name": "conv", "class_name": None, "weights": ["kernel"]},
        {"name": "norm", "class_name": "GroupNormalization", "weights": ["gamma", "beta"]}]
    torch_side = make_plan(keras, LAYOUT_TORCH).apply(keras)
    assert list(torch_side.tensors) == ["dense.weight", "dense.bias", "conv.weight", "norm.weight",
                                        "norm.bias"]
    assert_bit_exact(torch_side["dense.weight"].load(), keras["dense/kernel"].load().T)
    assert_bit_exact(torch_side["conv.weight"].load(), keras["conv/kernel"].load().transpose(2, 1, 0))


def test_a_bias_that_is_not_one_value_per_output_is_refused_both_ways():
    from transcoder.checkpoint import TensorRef as Ref

    def ckpt(layout, **tensors):
        return Checkpoint({k: Ref.from_array(k, v) for k, v in tensors.items()}, layout)

    with pytest.raises(MappingError, match=r"a Linear bias must have shape \[3\], not \[4\]"):
        make_plan(Checkpoint({"fc.weight": Ref.from_array("fc.weight", rand(3, 4)),
                              "fc.bias": Ref.from_array("fc.bias", rand(4))}, LAYOUT_TORCH,
                             meta={"module_kinds": {"fc": "Linear"}}), LAYOUT_KERAS)
    with pytest.raises(MappingError, match=r"a Conv2d bias must have shape \[5\]"):
        make_plan(ckpt(LAYOUT_KERAS, **{"c/kernel": rand(3, 3, 2, 5), "c/bias": rand(2)}),
                  LAYOUT_TORCH)
    grouped = ckpt(LAYOUT_TORCH, **{"up.weight": rand(4, 3, 2, 2), "up.bias": rand(6)})
    grouped.meta["module_kinds"] = {"up": "ConvTranspose2d"}      # groups=2: bias 2 x 3
    assert make_plan(grouped, LAYOUT_KERAS).steps
