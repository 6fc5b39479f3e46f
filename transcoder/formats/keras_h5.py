"""Keras HDF5 files with h5py only: legacy weights-only / full-model ``.h5`` and Keras 3 ``.weights.h5``.

Which layout a file has is read from its content (DESIGN.md section 4):
``layer_names`` in the root attributes = legacy weights-only; a ``model_weights`` group = legacy
full model; a ``layers`` or ``vars`` group = Keras 3 ``.weights.h5`` (see :mod:`.keras_v3`).

Legacy files name every weight through the layer group's ``weight_names`` attribute
(``conv/kernel`` in Keras 3, ``conv/kernel:0`` in tf.keras 2, ``conv2d_1_1/kernel:0`` in a
scope Keras 2.0-2.2 found taken, ``seq/conv/kernel`` for a layer built inside a Sequential,
``bi/forward_lstm/lstm_cell/kernel`` for a Bidirectional LSTM); the datasets are always found
through those names, and :func:`short_weight_path` turns them into the short Keras weight paths
of the checkpoint convention (``kernel``, ``forward/kernel``). A full model's ``model_config``
(:mod:`.keras_config`) gives each layer's class and config: weights whose names do not say
what they are take the class's weight order (:func:`by_position`), and a nested model's group
is split into its layers (:func:`nested_weights`).

:func:`write` writes the legacy weights-only layout, which Keras 3 and tf.keras 2 load with
``model.load_weights(path, by_name=True)``. Tensors with no Keras counterpart go to a
``transcoder_carried`` group that Keras never reads.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import numpy as np

from ..checkpoint import LAYOUT_KERAS, Checkpoint, TensorRef
from ..errors import FormatError, MappingError, UnsafeFileError, UnsupportedError, UsageError
from . import filemeta
from ._guard import jsonsafe, limits
from ._io import rawfill, sigbus
from ._hdf5 import keras_config
from .base import HDF5, Format, Head, LazyModule, ReadOptions

if TYPE_CHECKING:
    import h5py

    from ._hdf5 import h5safety as h5s
    from ._hdf5 import keras_v3
else:   # loaded when a file is read or written, not when the registry reads FORMAT
    h5py = LazyModule("h5py")
    h5s = LazyModule("transcoder.formats._hdf5.h5safety")
    keras_v3 = LazyModule("transcoder.formats._hdf5.keras_v3")

#: What the written files claim. Loaders special-case only keras_version "1" and backend "theano".
KERAS_VERSION = "3.15.1"
BACKEND = "tensorflow"

CARRIED_GROUP = "transcoder_carried"
TOP_LEVEL_GROUP = "top_level_model_weights"
RESERVED_NAMES = frozenset({CARRIED_GROUP})
CLASS_ATTR = "transcoder_class_name"

#: Sub-layer components Keras puts between an RNN layer and its weights (``lstm/lstm_cell/kernel``).
RNN_CELL = re.compile(r"^(lstm|gru|simple_rnn|conv_lstm|peephole_lstm)_cell(_\d+)?$")
DIRECTION = re.compile(r"^(forward|backward)_.+$")
VARIABLE_SUFFIX = re.compile(r":\d+$")
#: What a TensorFlow graph appends to a name scope already taken (``conv2d_1`` -> ``conv2d_1_1``).
UNIQUIFIED = re.compile(r"(_\d+)+")
UNIQUIFIED_TAIL = re.compile(r"_\d+$")

#: Stored byte for byte as numpy holds them (little-endian): written by :mod:`.rawfill`.
RAW_DTYPES = frozenset({"float64", "float32", "float16", "int64", "int32", "int16", "int8",
                        "uint8"})


# -- reading -------------------------------------------------------------------------------------

def read(path: Path, options: ReadOptions) -> Checkpoint:
    """Read any Keras HDF5 layout (lazily: data is read on ``TensorRef.load()``)."""
    f = h5s.open_file(path, path)
    try:
        ckpt = _read_open(f, path)
    except BaseException:
        f.close()
        raise
    ckpt.on_close(f.close)
    return ckpt


def _read_open(f: h5py.File, path: Path) -> Checkpoint:
    size = os.path.getsize(path)
    with h5s.h5_errors(path):
        if h5s.attr_strings(f, "layer_names") is not None:
            return read_legacy(f, f, path, size, "keras_h5")
        if h5s.has(f, "model_weights"):
            return read_legacy(f, h5s.group(f, "model_weights", path), path, size, "keras_h5")
        if h5s.has(f, "layers") or h5s.has(f, "vars"):
            layers, tensors = keras_v3.read_tree(f, path, size)
            return Checkpoint(tensors, LAYOUT_KERAS, str(path), "keras_weights_h5",
                              {"keras_layers": layers})
    raise FormatError("not a Keras weights file (no layer_names attribute, model_weights, "
                      "layers or vars group)", path=path)


def short_weight_path(weight_name: str, layer: str, bidirectional: bool = False) -> str:
    """``seq/lstm/lstm_cell/kernel:0`` in layer ``lstm`` -> ``kernel``.

    Drops the ``:0`` suffix, everything up to the layer's name scope (:func:`scope_index`), RNN
    cell components, and for a Bidirectional maps ``forward_<x>``/``backward_<x>`` to
    ``forward``/``backward``.
    """
    parts = VARIABLE_SUFFIX.sub("", weight_name).split("/")
    return _short(parts, scope_index(parts, layer), bidirectional)


def _short(parts: list[str], scope: int, bidirectional: bool) -> str:
    """The components after the name scope at index ``scope``, cells dropped."""
    parts = [p for p in parts[scope + 1:-1] if not RNN_CELL.match(p)] + parts[-1:]
    if bidirectional and len(parts) > 1 and DIRECTION.match(parts[0]):
        parts[0] = parts[0].split("_", 1)[0]
    return "/".join(parts)


def uniquifies(component: str, layer: str) -> bool:
    """Whether ``component`` is ``layer`` as a graph uniquified it (``conv2d_1_1``)."""
    return component.startswith(layer) and UNIQUIFIED.fullmatch(component[len(layer):]) is not None


def scope_index(parts: list[str], layer: str) -> int:
    """Where the layer's name scope is among a weight name's components: the last one equal to
    the layer name (``seq/conv/kernel``, ``d/d/kernel``), else the last one that is the name
    uniquified (``conv2d_1_1/kernel``: Keras 2.0-2.2 found the scope taken in the graph); -1
    when none is (the name starts inside the layer)."""
    for found in (lambda p: p == layer, lambda p: uniquifies(p, layer)):
        hits = [i for i, p in enumerate(parts[:-1]) if found(p)]
        if hits:
            return hits[-1]
    return -1


def by_position(shorts: list[str], order: list[str] | None) -> list[str]:
    """The short names in the class's weight ``order``: names the order knows are kept, the
    others (``param_0``, ``kernel_1``, a wrapper's ``dense/kernel``) take the order's remaining
    names by position, as Keras itself loads legacy files by position. Unchanged when the
    counts differ or a name repeats (then the rule reports what it does not know)."""
    if order is None or len(order) != len(shorts) or len(set(shorts)) != len(shorts):
        return shorts
    rest = iter([n for n in order if n not in shorts])
    return [s if s in order else next(rest) for s in shorts]


def _is_bidirectional(class_name: str | None, weight_names: list[str], layer: str) -> bool:
    """From the class if known, else only if both ``forward_<x>`` and ``backward_<x>`` occur."""
    if class_name is not None:
        return class_name == "Bidirectional"
    shorts = [short_weight_path(w, layer).split("/") for w in weight_names]
    firsts = {DIRECTION.sub(r"\1", p[0]) for p in shorts if len(p) > 1 and DIRECTION.match(p[0])}
    return firsts == {"forward", "backward"}


def _layer_names(root: h5py.Group) -> list[str]:
    names = h5s.attr_strings(root, "layer_names") or []
    if h5s.has(root, TOP_LEVEL_GROUP) and TOP_LEVEL_GROUP not in names:
        names.append(TOP_LEVEL_GROUP)
    return names


def read_legacy(f: h5py.File, root: h5py.Group, path: Path, size: int, fmt: str) -> Checkpoint:
    """Legacy layouts: iterate ``layer_names`` and resolve each weight through ``weight_names``;
    with a ``model_config``, each layer's class and config name its weights, and the layers of
    a nested model (whose weights are in the nested model's group) are read one by one."""
    config = h5s.attr_json(f, "model_config", path)
    _refuse_keras_1(f, root, path)
    specs = {s.name: s for s in keras_config.layer_specs(config)}
    names = _layer_names(root)
    reader = _Legacy(path, size, set(names))
    for name in names:
        grp = h5s.group(root, name, path)
        weight_names = h5s.attr_strings(grp, "weight_names") or []
        if weight_names:
            reader.group(grp, name, specs.get(name), weight_names)
    meta: dict[str, Any] = {"keras_layers": reader.layers}
    if config is not None:
        meta["keras_config"] = config
    _refuse_theano_kernels(f, root, reader.tensors, path)
    _read_ours(f, reader.tensors, meta, path, size, reader.used)
    limits.check_file(sum(t.nbytes for t in reader.tensors.values()), size, path=path)
    return Checkpoint(reader.tensors, LAYOUT_KERAS, str(path), fmt, meta)


def _version_attr(f: h5py.File, root: h5py.Group, name: str) -> str:
    return h5s.attr_text(f, name) or h5s.attr_text(root, name) or ""


def _refuse_keras_1(f: h5py.File, root: h5py.Group, path: Path) -> None:
    version = _version_attr(f, root, "keras_version")
    if version.split(".")[0] == "1":
        raise UnsupportedError(f"written by Keras {version}, whose weights have other names and "
                               f"layouts (Keras 2 converted them when loading)", path=path,
                               hint="load it in Keras 2 and save it again")


def _refuse_theano_kernels(f: h5py.File, root: h5py.Group, tensors: dict[str, TensorRef],
                           path: Path) -> None:
    """Keras 2 flipped the convolution kernels of files written with Theano when loading them."""
    flipped = [n for n, t in tensors.items() if len(t.shape) >= 3]
    if _version_attr(f, root, "backend") == "theano" and flipped:
        raise UnsupportedError("written with the Theano backend, whose convolution kernels are "
                               "flipped (Keras converted them when loading)", path=path,
                               tensor=flipped[0], hint="load it in Keras 2 with the TensorFlow "
                               "backend and save it again")


class _Legacy:
    """The layers and tensors of a legacy file, read group by group."""

    def __init__(self, path: Path, size: int, taken: set[str]) -> None:
        self.path, self.size, self.taken = path, size, taken
        self.used = _Used(path)
        self.layers: list[dict] = []
        self.tensors: dict[str, TensorRef] = {}

    def group(self, grp: h5py.Group, name: str, spec: keras_config.LayerSpec | None,
              weight_names: list[str]) -> None:
        """One group of ``layer_names``: a layer, or a nested model holding its layers' weights."""
        if spec is None or not spec.is_model:
            cls = spec.class_name if spec else h5s.attr_text(grp, CLASS_ATTR)
            split = [_split(w) for w in weight_names]
            self.add(grp, name, (cls, spec.config if spec else None),
                     [(w, parts, scope_index(parts, name)) for w, parts in split])
            return
        self.taken.discard(name)  # the model becomes its layers
        for (leaf, models), items in nested_weights(spec, weight_names):
            self.add(grp, self.unique(leaf.name, models), (leaf.class_name, leaf.config), items)

    def unique(self, name: str, models: tuple[str, ...]) -> str:
        """A nested model's layer keeps its name, prefixed by its models' when that is taken."""
        if name in self.taken:
            name = ".".join((*models, name))
        self.taken.add(name)
        return name

    def add(self, grp: h5py.Group, layer: str, kind: tuple[str | None, dict | None],
            items: list[tuple[str, list[str], int]]) -> None:
        """Layer ``layer`` of class and config ``kind``, its weights ``(weight name, its
        components, index of the layer's name scope)`` resolved in ``grp``."""
        cls, cfg = kind
        bidi = _is_bidirectional(cls, [w for w, _, _ in items], layer)
        shorts = by_position([_short(parts, scope, bidi) for _, parts, scope in items],
                             keras_v3.weight_order(cls, cfg or {}))
        for (weight_name, _, _), short in zip(items, shorts):
            tensor = f"{layer}/{short}"
            if tensor in self.tensors:
                raise FormatError("two weights of the layer map to this name", path=self.path,
                                  tensor=tensor)
            ds = self.used.once(h5s.resolve(grp, weight_name, self.path), tensor)
            self.tensors[tensor] = h5s.tensor_ref(tensor, ds, self.size, self.path)
        entry = {"name": layer, "class_name": cls, "weights": shorts}
        if cfg is not None:
            entry["config"] = cfg
        self.layers.append(entry)


def _split(weight_name: str) -> tuple[str, list[str]]:
    return weight_name, VARIABLE_SUFFIX.sub("", weight_name).split("/")


def nested_weights(spec: keras_config.LayerSpec, weight_names: list[str]
                   ) -> list[tuple[tuple, list[tuple[str, list[str], int]]]]:
    """A nested model's weights by the layer they belong to, in config order: ``((layer spec,
    enclosing model names), [(weight name, components, scope index)])``. Keras lists a nested
    model's trainable weights first, so names decide, never positions: a weight belongs to
    the layer its first name component names (``inner/d1/kernel``, ``d1_1/kernel:0``), not
    counting components that name the enclosing models; weights naming none of its layers
    stay with the model itself."""
    owners = {leaf.name: (leaf, models) for leaf, models in keras_config.leaves(spec)}
    found: dict[str, list] = {}
    for weight_name, parts in map(_split, weight_names):
        hit = _owner(parts, owners, {spec.name, *(m for _, ms in owners.values() for m in ms)})
        key, scope = hit if hit else ("", scope_index(parts, spec.name))
        found.setdefault(key, []).append((weight_name, parts, scope))
    order = [name for name in owners if name in found] + ([""] if "" in found else [])
    return [(owners.get(key, (spec, ())), found[key]) for key in order]


def _owner(parts: list[str], owners: dict, models: set[str]) -> tuple[str, int] | None:
    """``(layer name, index)`` of the first component naming one of ``owners`` (exactly, else
    uniquified) that does not name an enclosing model; else of the last one that does (a
    layer named like its model: ``out/out/kernel``)."""
    hits = [(name, i) for i, p in enumerate(parts[:-1]) if (name := _named(p, owners))]
    outside = [(name, i) for name, i in hits if parts[i] not in models]
    return (outside or hits[-1:] or [None])[0]


def _named(component: str, owners: dict) -> str | None:
    """The layer a name component names: itself, or what a graph uniquified (``d1_1``)."""
    name = component
    while name not in owners:
        stem = UNIQUIFIED_TAIL.sub("", name)
        if stem == name:
            return None
        name = stem
    return name


class _Used:
    """Datasets already read: Keras never stores one dataset under two weights, and one stored
    under a thousand names would be written a thousand times."""

    def __init__(self, path: Path) -> None:
        self.path, self.seen = path, {}

    def once(self, ds: h5py.HLObject, tensor: str) -> h5py.HLObject:
        key = h5s.object_key(ds)
        if key in self.seen:
            raise UnsafeFileError(f"HDF5 object {ds.name} is both {self.seen[key]} and "
                                  f"{tensor}; refusing a file that reuses datasets", path=self.path)
        self.seen[key] = tensor
        return ds


def _read_ours(f: h5py.File, tensors: dict[str, TensorRef], meta: dict, path: Path,
               size: int, used: _Used) -> None:
    """Our own additions: the ``transcoder`` attribute and the carried tensors."""
    ours = h5s.attr_json(f, "transcoder", path)
    if ours is not None:
        meta["transcoder"] = jsonsafe.check_stored_meta(ours, path)
    theirs = h5s.attr_json(f, filemeta.KEY, path)
    if theirs is not None:
        meta[filemeta.KEY] = filemeta.checked(theirs, path)
    if not h5s.has(f, CARRIED_GROUP):
        return
    carried = []
    items = sorted(h5s.children(h5s.group(f, CARRIED_GROUP, path), path),
                   key=lambda kv: int(kv[0]) if kv[0].isdigit() else -1)
    for key, ds in items:
        name = h5s.attr_text(ds, "name")
        if name is None or not key.isdigit():
            raise FormatError(f"carried tensor {CARRIED_GROUP}/{key} has no name", path=path)
        if name in tensors:
            raise FormatError("carried tensor duplicates a Keras weight", path=path, tensor=name)
        tensors[name] = h5s.tensor_ref(name, used.once(ds, name), size, path)
        carried.append(name)
    meta["carried"] = carried


# -- writing -------------------------------------------------------------------------------------

def write(ckpt: Checkpoint, path: Path) -> None:
    """Write a legacy weights-only ``.h5``, one tensor in memory at a time.

    Writes ``path`` in place: the pipeline (``convert.atomic_output``) already hands every
    writer a temporary file that it renames only on success. (A second rename here cost 0.3 s
    per GiB: ext4 flushes a file renamed over an existing one.) An existing file at ``path`` is
    unlinked and created anew, not truncated: ext4 starts writing a file truncated to zero to
    disk when it is closed (``auto_da_alloc``; 0.3 s per GiB in ``close``, measured).
    """
    path = Path(path)
    if path.name.lower().endswith(".weights.h5"):
        raise UsageError("writing a Keras 3 .weights.h5 needs the Keras architecture: pass "
                         "--keras-model (or write a legacy .h5)", path=path)
    layers = layers_to_write(ckpt)
    carried = carried_to_write(ckpt, layers)
    try:
        path.unlink(missing_ok=True)
        with h5py.File(path, "x") as f, rawfill.Filler(path) as filler:
            _write_root(f, [e["name"] for e in layers], ckpt.meta)
            jobs = [job for entry in layers for job in _create_layer(f, entry)]
            jobs += _create_carried(f, carried)
            _create_datasets(jobs, ckpt, path, filler)
    except OSError as exc:
        raise sigbus.write_failure(exc, path) from None


def layers_to_write(ckpt: Checkpoint) -> list[dict]:
    """``meta["keras_layers"]`` checked against the tensors (or derived from the names)."""
    carried = set(ckpt.meta.get("carried") or [])
    layers = ckpt.meta.get("keras_layers")
    if layers is None:
        layers = _layers_from_names([n for n in ckpt.tensors if n not in carried])
    seen: set[str] = set()
    for entry in layers:
        _check_layer(entry, seen, ckpt)
    return layers


def _layers_from_names(names: list[str]) -> list[dict]:
    layers: dict[str, dict] = {}
    for name in names:
        layer, sep, weight = name.partition("/")
        if not sep:
            raise MappingError("a keras-layout tensor name must be <layer>/<weight>", tensor=name)
        layers.setdefault(layer, {"name": layer, "class_name": None, "weights": []})
        layers[layer]["weights"].append(weight)
    return list(layers.values())


def _check_layer(entry: dict, seen: set[str], ckpt: Checkpoint) -> None:
    name = entry.get("name")
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") \
            or name in RESERVED_NAMES:
        raise UnsupportedError(f"a Keras layer cannot be named {name!r} in an .h5 file")
    if name in seen:
        raise MappingError(f"two Keras layers are named {name!r}")
    seen.add(name)
    for weight in entry.get("weights", []):
        if not weight or any(p in ("", ".", "..") for p in weight.split("/")):
            raise MappingError(f"invalid Keras weight path {weight!r}", tensor=f"{name}/{weight}")
        if f"{name}/{weight}" not in ckpt.tensors:
            raise MappingError("listed in keras_layers but not in the checkpoint",
                               tensor=f"{name}/{weight}")


def carried_to_write(ckpt: Checkpoint, layers: list[dict]) -> list[str]:
    """The carried tensor names; MappingError for a tensor that would be silently dropped."""
    carried = list(ckpt.meta.get("carried") or [])
    covered = {f"{e['name']}/{w}" for e in layers for w in e.get("weights", [])} | set(carried)
    for name in carried:
        if name not in ckpt.tensors:
            raise MappingError("listed as carried but not in the checkpoint", tensor=name)
    lost = [n for n in ckpt.tensors if n not in covered]
    if lost:
        raise MappingError(f"{len(lost)} tensor(s) are neither a Keras weight nor carried",
                           tensor=lost[0])
    return carried


def _write_root(f: h5py.File, names: list[str], meta: dict) -> None:
    _strings_attr(f["/"], "layer_names", [n for n in names if n != TOP_LEVEL_GROUP])
    f.attrs["backend"] = BACKEND.encode("utf8")
    f.attrs["keras_version"] = KERAS_VERSION.encode("utf8")
    if meta.get("transcoder") is not None:
        f.attrs["transcoder"] = json.dumps(meta["transcoder"])
    if filemeta.of(meta):   # the source's own metadata (a safetensors __metadata__)
        f.attrs[filemeta.KEY] = json.dumps(filemeta.of(meta))


def _create_layer(f: h5py.File, entry: dict) -> list[tuple[h5py.Group, str, str]]:
    """The layer's group and attributes; its (group, dataset name, tensor name) jobs."""
    grp = _group(f, entry["name"])
    weight_names = [f"{entry['name']}/{w}" for w in entry.get("weights", [])]
    _strings_attr(grp, "weight_names", weight_names)
    if entry.get("class_name"):
        _text_attr(grp, CLASS_ATTR, entry["class_name"])
    return [(grp, name, name) for name in weight_names]


def _create_carried(f: h5py.File, carried: list[str]) -> list[tuple[h5py.Group, str, str]]:
    """Carried tensors go to ``transcoder_carried/<i>`` with their name as an attribute."""
    if not carried:
        return []
    grp = f.create_group(CARRIED_GROUP)
    return [(grp, str(i), name) for i, name in enumerate(carried)]


def _create_datasets(jobs: list[tuple[h5py.Group, str, str]], ckpt: Checkpoint, path: Path,
                     filler: rawfill.Filler) -> None:
    """Every dataset, in job order. Those whose bytes HDF5 stores as they are in memory get
    their file space now and their data from ``filler``'s threads, written beside HDF5 (the
    space is HDF5's raw data, which it never touches again: no fill value); so do bfloat16
    tensors, as the exact float32 that ``h5s.write_array`` stores; scalars of those dtypes are
    written here through the same low-level calls, the rest (bool, complex, bfloat16 scalars
    and empty ones) through ``h5s.write_array``."""
    plists, group_names = _plists(), {}
    for grp, rel, name in jobs:
        ref = ckpt.tensors[name]
        if ref.dtype in RAW_DTYPES and ref.shape:  # HDF5 gives scalars no offset
            dsid = _allocate(grp, rel, ref.shape, ref.dtype, plists)
            if ref.nbytes:
                filler.add(rawfill.Region(dsid.get_offset(), ref))
        elif ref.dtype in RAW_DTYPES:   # a scalar (a BatchNorm's step count): written here
            dsid = _allocate(grp, rel, (), ref.dtype, plists)
            dsid.write(h5py.h5s.ALL, h5py.h5s.ALL, np.ascontiguousarray(ref.load()))
        elif ref.dtype == "bfloat16" and ref.shape and ref.nbytes:
            dsid = _allocate(grp, rel, ref.shape, "float32", plists)
            h5py.Dataset(dsid).attrs["transcoder_dtype"] = "bfloat16"   # as h5s.write_array does
            filler.add(rawfill.Region(dsid.get_offset(), ref, as_float32=True))
        else:
            dsid = _write_array(grp, rel, ref.load(), name, path).id
        if id(grp) not in group_names:  # each look-up asks HDF5
            group_names[id(grp)] = grp.name
        if group_names[id(grp)] == "/" + CARRIED_GROUP:  # no layer may take it (RESERVED_NAMES)
            _name_attr(dsid, name)


# The layout (groups, their name lists, the datasets' headers and file space) goes through
# h5py's low-level calls: the same HDF5 calls, so the same bytes, as ``create_group`` and
# ``attrs[...] = ...`` make, without their Python (a layer cost 0.25 ms in them; a 253-tensor
# file's layout took 23 ms of CPU, 17 ms now).

def _group(parent: h5py.Group, name: str) -> h5py.Group:
    """``parent.create_group(name)``: its name ASCII-coded when it is ASCII, as h5py does."""
    try:
        encoded, coding = name.encode("ascii"), h5py.h5t.CSET_ASCII
    except UnicodeEncodeError:
        encoded, coding = name.encode("utf8"), h5py.h5t.CSET_UTF8
    return h5py.Group(h5py.h5g.create(parent.id, encoded, lcpl=_group_lcpl(coding)))


@lru_cache(maxsize=None)
def _group_lcpl(coding: int) -> h5py.h5p.PropLCID:
    lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
    lcpl.set_create_intermediate_group(True)
    lcpl.set_char_encoding(coding)
    return lcpl


def _strings_attr(obj: h5py.HLObject, name: str, values: list[str]) -> None:
    """``h5s.write_strings_attr`` (fixed-length bytes, as Keras stores names); names that do
    not fit one attribute go through it, split."""
    data = np.array([v.encode("utf8") for v in values], dtype=bytes) if values \
        else np.zeros(0, "S1")
    if data.nbytes > h5s.ATTR_LIMIT_BYTES:
        h5s.write_strings_attr(obj, name, values)
        return
    attr = h5py.h5a.create(obj.id, name.encode("ascii"),
                           h5py.h5t.py_create(data.dtype, logical=True),
                           h5py.h5s.create_simple(data.shape))
    attr.write(data)


def _text_attr(obj: h5py.HLObject, name: str, text: str) -> None:
    """``obj.attrs[name] = text``: a variable-length UTF-8 string, as h5py stores a str."""
    attr = h5py.h5a.create(obj.id, name.encode("ascii"),
                           h5py.h5t.py_create(_name_type(), logical=True),
                           h5py.h5s.create(h5py.h5s.SCALAR))
    attr.write(np.array(text, dtype=_name_type()))


@lru_cache(maxsize=None)
def _name_type() -> np.dtype:
    return h5py.h5t.string_dtype("utf-8")


def _name_attr(dsid: h5py.h5d.DatasetID, name: str) -> None:
    """``ds.attrs["name"] = name`` through h5py's low-level calls (a third of the time per
    carried tensor went to the high-level ones)."""
    attr = h5py.h5a.create(dsid, b"name", h5py.h5t.py_create(_name_type(), logical=True),
                           h5py.h5s.create(h5py.h5s.SCALAR))
    attr.write(np.array(name, dtype=_name_type()))


def _plists() -> tuple[h5py.h5p.PropDCID, h5py.h5p.PropLCID, dict]:
    """Dataset and link creation properties for :func:`_allocate`, and the HDF5 types it
    has made, by dtype (made once per file)."""
    dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
    dcpl.set_alloc_time(h5py.h5d.ALLOC_TIME_EARLY)
    dcpl.set_fill_time(h5py.h5d.FILL_TIME_NEVER)
    dcpl.set_obj_track_times(False)   # no timestamps: one input, the same bytes, every run
    lcpl = h5py.h5p.create(h5py.h5p.LINK_CREATE)
    lcpl.set_create_intermediate_group(True)   # weight paths hold groups: conv/conv/kernel
    lcpl.set_char_encoding(h5py.h5t.CSET_UTF8)
    return dcpl, lcpl, {}


def _allocate(grp: h5py.Group, rel: str, shape: tuple[int, ...], dtype: str,
              plists: tuple) -> h5py.h5d.DatasetID:
    """A contiguous dataset whose file space is allocated now and never filled by HDF5.
    ``shape`` ``()``: a scalar. (h5py's low-level calls: ``create_dataset`` costs 0.1 ms more
    per dataset in Python, 0.4 ms more per scalar, which it writes: a bulk file's 56 BatchNorm
    step counts took 20 ms of its 220 ms, 4 files x 4 interleaved rounds.)"""
    dcpl, lcpl, types = plists
    space = h5py.h5s.create_simple(shape) if shape else h5py.h5s.create(h5py.h5s.SCALAR)
    if dtype not in types:
        types[dtype] = h5py.h5t.py_create(np.dtype(dtype))
    h5type = types[dtype]
    return h5py.h5d.create(grp.id, rel.encode("utf8"), h5type, space, dcpl=dcpl, lcpl=lcpl)


def _write_array(grp: h5py.Group, rel: str, array: np.ndarray, name: str,
                 path: Path) -> h5py.Dataset:
    try:
        return h5s.write_array(grp, rel, array)
    except (ValueError, TypeError) as exc:
        raise MappingError(f"cannot store tensor in HDF5 ({exc})", path=path,
                           tensor=name) from None


def sniff(head: Head, path: Path) -> bool:
    """The HDF5 signature (the reader tells the legacy and Keras 3 layouts apart)."""
    return head.data.startswith(HDF5)


#: One reader for both; the name decides which is written. Content says only "HDF5": a file
#: named ``.weights.h5`` is read as such, any other HDF5 file as legacy (the same reader).
FORMAT = Format("keras_h5", (".h5", ".hdf5"), LAYOUT_KERAS, magics=(HDF5,),
                description="Keras legacy HDF5 (weights-only or full model)",
                sniff=sniff, reader=read, writer=write)
WEIGHTS_FORMAT = Format("keras_weights_h5", (".weights.h5",), LAYOUT_KERAS, magics=(HDF5,),
                        description="Keras 3 weights file (.weights.h5)", needs_model=True,
                        reader=read, writer=write)
