"""The check as the command runs it: SRC and its converted DST, read back from disk.

- With ``--model``: the full-model check. The PyTorch module is loaded with the PyTorch-layout
  file; the Keras side is the ``--keras-model`` loaded with the Keras-layout file by Keras'
  own loader, or else the module rebuilt in Keras with that file's weights. Needs
  ``--input-shape``.
- Without an architecture: the per-layer check of every mapped layer, against DST's tensors.

Both read the files back, so what is checked is what was written.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from ..checkpoint import LAYOUT_TORCH
from ..convert import CheckOptions
from ..errors import UsageError
from .report import CheckReport

LIVE_PACKAGES = ("torch", "keras", "tensorflow")


def unavailable() -> str | None:
    """Why no check can run here (None when torch and Keras are installed)."""
    missing = [p for p in LIVE_PACKAGES if importlib.util.find_spec(p) is None]
    if missing:
        return (f"{' and '.join(missing)} not installed (pip install 'transcoder[check]' "
                f"to check conversions)")
    return None


def verify(src: Path, dst: Path, *, arch=None, key: str | None = None, rules=None,
           options: CheckOptions | None = None, full: bool = True) -> CheckReport:
    """Check DST against SRC: the full-model check when ``arch.model`` is given and ``full``,
    else the per-layer check (which still takes layer kinds from ``arch.model``)."""
    options = options or CheckOptions()
    if arch is not None and arch.model and full:
        return _check_model(Path(src), Path(dst), arch, key, options)
    return _check_layers(Path(src), Path(dst), key, rules, options, arch)


def _check_layers(src: Path, dst: Path, key, rules, options: CheckOptions, arch) -> CheckReport:
    from ..convert import Architecture, prepare
    from .layers import check_layers

    kinds_from = Architecture(model=arch.model) if arch is not None and arch.model else None
    prepared = prepare(src, dst, key=key, rules=rules, arch=kinds_from)
    try:
        with _written(dst, prepared, arch) as written:
            return check_layers(prepared.source, prepared.plan, written, seed=options.seed,
                                atol=options.atol, rtol=options.rtol)
    finally:
        prepared.close()


def _written(dst: Path, prepared, arch):
    """DST as a checkpoint named like the plan's target (Keras files saved through a user's
    model name their layers their own way: paired back as the conversion paired them)."""
    from ..checkpoint import LAYOUT_KERAS
    from ..convert import read
    from ..models import keras_side
    from ..models.live import LiveModels

    written = read(dst)
    if written.layout != LAYOUT_KERAS:
        return written
    if arch is not None and arch.keras_model:
        written = LiveModels(keras_model=keras_side.load_spec(arch.keras_model)).attach(written, dst)
    expected = prepared.plan.apply(prepared.source)
    if all(name in written.tensors for name in expected.tensors):
        return written
    ours = keras_side.layers_of_checkpoint(expected)
    pairs = keras_side.pair(ours, keras_side.layers_of_checkpoint(written))
    renamed = keras_side.renamed_to_ours(pairs, written)
    renamed.on_close(written.close)
    return renamed


def _check_model(src: Path, dst: Path, arch, key, options: CheckOptions) -> CheckReport:
    from ..convert import read
    from ..models import torch_side
    from .models import check_models, parse_input_specs

    if not options.input_shapes:
        raise UsageError("the full-model check needs the input shape(s)",
                         hint="pass --input-shape 4,10,128 (PyTorch layout), or --no-check")
    specs = parse_input_specs(options.input_shapes, options.input_dtypes)
    torch_file, keras_file = (src, dst) if _is_torch(src) else (dst, src)
    if _is_torch(keras_file):
        raise UsageError("both files are PyTorch checkpoints: nothing to check across frameworks")
    module = torch_side.load_spec(arch.model)
    with read(torch_file, key=key if torch_file == src else None) as ckpt:
        torch_side.load_strict(module, ckpt)
    keras_model = _keras_side(module, keras_file, arch, specs, options)
    layout = "channels_last" if options.channels_last else "torch"
    pairs = _pairs(module, keras_model) if arch.keras_model else None
    return check_models(module, keras_model, specs, seed=options.seed, atol=options.atol,
                        rtol=options.rtol, keras_layout=layout, pairs=pairs)


def _pairs(module, keras_model) -> list[tuple[str, str]]:
    """(module path, Keras layer) for localising a divergence in a twin named its own way:
    the same pairing as the conversion (by name, then by order with kinds and shapes)."""
    from ..models import keras_side
    from ..models.live import reference_checkpoint
    from ..rules.plan import plan_to_keras

    reference = reference_checkpoint(module)
    ours = keras_side.layers_of_checkpoint(plan_to_keras(reference).apply(reference))
    modules = dict(module.named_modules())
    pairs = []
    for p in keras_side.pair(ours, keras_side.layers_of_model(keras_model)):
        path = p.ours.name if p.ours.name in modules else p.ours.name.rsplit(".l", 1)[0]
        pairs.append((path, p.theirs.name))
    return pairs


def _is_torch(path: Path) -> bool:
    from ..formats import for_path

    return for_path(path).layout == LAYOUT_TORCH


def _keras_side(module, keras_file: Path, arch, specs, options: CheckOptions):
    """The user's Keras model loaded with the file, or the module rebuilt with its weights."""
    from ..convert import read
    from ..models import keras_side
    from ..models.live import LiveModels

    if arch.keras_model:
        model = keras_side.load_spec(arch.keras_model)
        keras_side.load_into(model, keras_file)
        return model
    ckpt = LiveModels(torch_model=module).attach(read(keras_file), keras_file)
    try:
        return rebuilt(module, specs, options, keras_ckpt=ckpt)
    finally:
        ckpt.close()


def rebuilt(module, specs, options: CheckOptions, keras_ckpt=None):
    """The module rebuilt as a Keras model (weights from ``keras_ckpt``, else its own)."""
    import torch

    from ..models.rebuild import rebuild
    from ..frameworks import torch_from_numpy
    from .models import embedding_ranges, make_inputs

    highs, _ = embedding_ranges(torch, module, specs)
    example = [torch_from_numpy(x) for x in make_inputs(specs, options.seed, highs)]
    return rebuild(module, tuple(example), channels_last=options.channels_last,
                   keras_ckpt=keras_ckpt)
