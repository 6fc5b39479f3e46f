"""An artifact is shown to be inert before ``transcode check`` runs it.

- SavedModel: ``saved_model.pb`` parsed as data (TensorFlow's protobuf classes; nothing loaded
  or run) and every op of its graphs and function library checked against the allow-list of
  :mod:`.savedmodel_ops`; an op outside it is refused in one line naming it, before
  ``tf.saved_model.load``. A TF1 SavedModel (no object graph: the loader would run its graph
  as saved, restore op and main op included) is refused.
- TFLite: the flatbuffer walked with bounds checks (tables, vectors, strings, every index a
  tensor, operator code, buffer or subgraph refers to, every buffer's extent in the file)
  before the interpreter sees it; the interpreter then runs in a child process anyway
  (:mod:`.tflite_child`), since a well-formed file can still crash its kernels.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import FormatError, UnsafeFileError, UnsupportedError, one_line
from ..formats._guard.regular import open_regular
from .savedmodel_ops import ALLOWED, SAVER_FUNCTION, SAVER_OPS

#: protobuf's own limit on a message
MAX_PB = 2 << 30


def check_saved_model(folder: Path) -> None:
    """UnsafeFileError naming the first op outside the allow-list (or a saver function a
    loaded function could call); FormatError if ``saved_model.pb`` is not one."""
    from google.protobuf.message import DecodeError
    from tensorflow.core.protobuf import saved_model_pb2

    pb = Path(folder) / "saved_model.pb"
    try:
        with open_regular(pb) as fh:
            data = fh.read(MAX_PB + 1)
    except OSError as exc:
        raise FormatError(f"cannot read saved_model.pb: {exc.strerror or exc}", path=folder) from None
    if len(data) > MAX_PB:
        raise FormatError("saved_model.pb is larger than protobuf allows", path=folder)
    model = saved_model_pb2.SavedModel()
    try:
        model.ParseFromString(data)
    except (DecodeError, ValueError, RecursionError) as exc:
        raise FormatError(f"saved_model.pb is not a SavedModel ({one_line(exc)})",
                          path=folder) from None
    if not model.meta_graphs:
        raise FormatError("saved_model.pb holds no graph", path=folder)
    for meta_graph in model.meta_graphs:
        _check_meta_graph(meta_graph, folder)


def _check_meta_graph(meta_graph, folder: Path) -> None:
    if not meta_graph.object_graph_def.nodes:
        raise UnsupportedError("a TF1 SavedModel (no object graph): loading it runs its graph "
                               "as saved; only TF2 SavedModels are checked", path=folder,
                               hint="export with model.export() or tf.saved_model.save")
    library = {f.signature.name: f for f in meta_graph.graph_def.library.function}
    savers = {name for name in library if SAVER_FUNCTION.fullmatch(name)}
    for node in meta_graph.graph_def.node:
        _check_op(node.op, node.name, "the graph", library, folder)
    for name, function in library.items():
        saver = name in savers
        for node in function.node_def:
            if not (saver and node.op in SAVER_OPS):
                _check_op(node.op, node.name, f"function {name}", library, folder)
            called = _calls(node, library) & savers
            if called:
                raise UnsafeFileError(f"function {name} calls {sorted(called)[0]}, which writes "
                                      f"or reads files: refused, not run", path=folder)
    loaded = _loaded_functions(meta_graph.object_graph_def) & savers
    if loaded:
        raise UnsafeFileError(f"its object graph loads {sorted(loaded)[0]}, which writes or "
                              f"reads files, as a function: refused, not run", path=folder)


def _check_op(op: str, node: str, where: str, library: dict, folder: Path) -> None:
    if op not in ALLOWED and op not in library:   # an op may be a call of a library function
        raise UnsafeFileError(f"op {op} (node {node} in {where}) is outside the ops a model "
                              f"computes with (no file, network, process or Python ops): "
                              f"refused, not loaded", path=folder)


def _calls(node, library: dict) -> set[str]:
    """The library functions a node calls: by its op, or through function-valued attributes
    (``f``, ``then_branch``, ``body``, ``branches``, ...)."""
    names = {node.op} if node.op in library else set()
    for value in node.attr.values():
        if value.HasField("func"):
            names.add(value.func.name)
        if value.HasField("list"):
            names.update(f.name for f in value.list.func)
    return names


def _loaded_functions(object_graph) -> set[str]:
    """Every function name the object graph gives to the loader (methods, bare functions,
    resource initialisers)."""
    names = set(object_graph.concrete_functions)
    for node in object_graph.nodes:
        kind = node.WhichOneof("kind")
        if kind == "function":
            names.update(node.function.concrete_functions)
        elif kind == "bare_concrete_function":
            names.add(node.bare_concrete_function.concrete_function_name)
    return names
