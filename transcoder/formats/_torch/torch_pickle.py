"""The pickles inside PyTorch files, read and written without importing torch or running anything.

Reading: the restricted unpickler (:mod:`.unpickler`) resolves every global through
:func:`resolve_global`, which hands back our own inert stand-ins (never the real torch
functions):

- tensor rebuild functions build :class:`TensorDesc` (storage reference, offset, shape, strides);
- storage classes and dtypes become :class:`StorageType` / :class:`DType` markers;
- any other class (``omegaconf.DictConfig``, ``argparse.Namespace``, ``__torch__.Net``, ...)
  becomes a :class:`Placeholder` subclass that records its args, state and items as data;
- globals from modules that can run code (``os.system``, ``builtins.exec``, ...) are refused
  with :class:`UnsafeFileError` the moment the pickle names them, before anything runs.

Writing: :func:`dump_state_dict` emits the pickle ``torch.save`` writes for a flat
``OrderedDict`` of tensors, opcode by opcode, naming only globals ``weights_only=True`` accepts.
"""
from __future__ import annotations

import _compat_pickle
import collections
import pickle
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

from ...checkpoint import DTYPES, MAX_DIMS
from ...errors import FormatError, UnsafeFileError
from .._guard.brief import brief, key_text

# ---------------------------------------------------------------------------------------------
# Tables: torch names <-> canonical dtype names (see checkpoint.DTYPES)
# ---------------------------------------------------------------------------------------------

#: Legacy typed storage classes (``torch.FloatStorage`` ...) -> dtype name.
STORAGE_DTYPES: dict[str, str] = {
    "DoubleStorage": "float64",
    "FloatStorage": "float32",
    "HalfStorage": "float16",
    "BFloat16Storage": "bfloat16",
    "LongStorage": "int64",
    "IntStorage": "int32",
    "ShortStorage": "int16",
    "CharStorage": "int8",
    "ByteStorage": "uint8",
    "BoolStorage": "bool",
    "ComplexFloatStorage": "complex64",
    "ComplexDoubleStorage": "complex128",
}
DTYPE_STORAGES: dict[str, str] = {dtype: storage for storage, dtype in STORAGE_DTYPES.items()}

#: Storage classes we recognise but cannot read exactly (quantized data).
UNSUPPORTED_STORAGES = frozenset({
    "QInt8Storage", "QUInt8Storage", "QInt32Storage", "QUInt4x2Storage", "QUInt2x4Storage",
})

#: ``torch.<name>`` dtype globals -> dtype name (aliases included).
TORCH_DTYPES: dict[str, str] = {
    "float64": "float64", "double": "float64",
    "float32": "float32", "float": "float32",
    "float16": "float16", "half": "float16",
    "bfloat16": "bfloat16",
    "int64": "int64", "long": "int64",
    "int32": "int32", "int": "int32",
    "int16": "int16", "short": "int16",
    "int8": "int8",
    "uint8": "uint8",
    "bool": "bool",
    "complex64": "complex64", "cfloat": "complex64",
    "complex128": "complex128", "cdouble": "complex128",
}

#: ``torch.<name>`` dtype globals that exist but have no exact numpy counterpart here.
UNSUPPORTED_TORCH_DTYPES = frozenset({
    "uint16", "uint32", "uint64", "complex32", "chalf",
    "float8_e5m2", "float8_e4m3fn", "float8_e5m2fnuz", "float8_e4m3fnuz", "float8_e8m0fnu",
    "float4_e2m1fn_x2", "bits8", "bits16", "bits1x8", "bits2x4", "bits4x2",
    "qint8", "quint8", "qint32", "quint4x2", "quint2x4",
    *(f"uint{n}" for n in range(1, 8)), *(f"int{n}" for n in range(1, 8)),
})

#: ``torch.<name>`` quantization schemes: inert markers.
TORCH_QSCHEMES = frozenset({
    "per_tensor_affine", "per_tensor_symmetric", "per_channel_affine", "per_channel_symmetric",
    "per_channel_affine_float_qparams",
})

#: Modules whose globals can run code: a pickle naming any of them is refused outright.
#: (``builtins``, ``copyreg`` and ``_codecs`` have a few pure-data names allowed in STANDINS.)
REFUSED_MODULES = frozenset({
    "builtins", "os", "posix", "nt", "posixpath", "ntpath", "subprocess", "_posixsubprocess",
    "sys", "shutil", "importlib", "imp", "runpy", "socket", "_socket", "pty", "code", "codeop",
    "ctypes", "_ctypes", "pickle", "_pickle", "marshal", "webbrowser", "multiprocessing", "types",
    "operator", "_operator", "functools", "_functools", "io", "_io", "codecs", "_codecs",
    "copyreg", "tempfile", "signal", "threading", "_thread", "asyncio", "inspect", "gc", "ast",
    "pdb", "bdb", "timeit", "trace", "zipimport", "pkgutil", "site", "sysconfig", "platform",
    "ftplib", "http", "urllib", "smtplib", "telnetlib", "xmlrpc", "dill", "cloudpickle",
})  # torch.* has its own allow-list: _torch_global


# ---------------------------------------------------------------------------------------------
# Stand-ins: what the unpickler builds instead of real torch objects
# ---------------------------------------------------------------------------------------------

class _Inert:
    """Base of our stand-ins: a pickle BUILD on them is ignored instead of setting attributes."""

    def __setstate__(self, state: Any) -> None:
        pass


@dataclass(frozen=True, eq=False)
class StorageType(_Inert):
    """``torch.FloatStorage`` & co (``dtype`` set) or ``torch.storage.UntypedStorage`` (None)."""

    name: str
    dtype: str | None
    supported: bool = True


@dataclass(frozen=True, eq=False)
class DType(_Inert):
    """A ``torch.<dtype>`` global; ``dtype`` is None when it has no exact numpy counterpart."""

    torch_name: str
    dtype: str | None


@dataclass(eq=False)
class StorageRef(_Inert):
    """One storage record: ``key`` names ``data/<key>``; ``dtype`` None means untyped (bytes)."""

    key: str
    dtype: str | None
    numel: int
    location: str
    byte_offset: int = 0  # legacy storage views start inside their root storage

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize if self.dtype else 1

    @property
    def nbytes(self) -> int:
        return self.numel * self.itemsize


@dataclass(eq=False)
class TensorDesc(_Inert):
    """A dense tensor: ``shape``/``stride``/``offset`` in elements of ``dtype`` into ``storage``."""

    storage: StorageRef
    offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: str


@dataclass(eq=False)
class UnsupportedTensor(_Inert):
    """A tensor we recognise but cannot convert exactly (quantized, sparse, nested, float8 ...)."""

    reason: str


def is_tensor(obj: Any) -> bool:
    return isinstance(obj, (TensorDesc, UnsupportedTensor))


class Placeholder:
    """An object of a class the pickle names but we never import.

    REDUCE/NEWOBJ arguments land in ``args``/``kwargs``, BUILD state in ``state``, SETITEMS in
    ``items`` and APPENDS in ``elements``; all of it stays searchable for tensors.
    Subclasses are made per global by :func:`placeholder_class`.
    """

    module = ""
    qualname = ""
    meter: Any = None  # set by the unpickler on the fresh class: charges each construction

    def __new__(cls, *args: Any, **kwargs: Any) -> "Placeholder":
        if cls.meter is not None:
            cls.meter.charge_call(args, kwargs)
        obj = object.__new__(cls)
        obj.args, obj.kwargs = args, kwargs
        obj.state, obj.items, obj.elements = None, {}, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        if self.meter is not None:  # walks read the state once per object sharing it
            self.meter.charge_call((state,))
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.elements.append(value)

    def extend(self, values: Iterable[Any]) -> None:
        self.elements.extend(values)

    def fields(self) -> Mapping[str, Any]:
        """Named attributes: the BUILD state (``__dict__`` and slots), empty if there is none.
        Never a copy: copying rehashes every key, and many objects can share one state."""
        state = self.state
        if isinstance(state, Mapping):
            return state
        if not (isinstance(state, tuple) and len(state) == 2):
            return {}
        parts = [p for p in state if isinstance(p, Mapping)]
        if len(parts) < 2:
            return parts[0] if parts else {}
        return _Both(parts[1], parts[0])

    def children(self) -> list[tuple[str, Any]]:
        """(key, value) pairs to search for tensors: fields, items, elements, then args."""
        pairs = [(key_text(k), v) for k, v in self.fields().items()]
        pairs += [(key_text(k), v) for k, v in self.items.items()]
        pairs += [(str(i), v) for i, v in enumerate(self.elements)]
        pairs += [(str(i), v) for i, v in enumerate(self.args)]
        pairs += [(key_text(k), v) for k, v in self.kwargs.items()]
        return pairs

    def __repr__(self) -> str:
        return f"<{self.module}.{self.qualname}>"


class _Both(Mapping):
    """Two mappings read as one, ``first`` winning (slots over ``__dict__``), without copying."""

    def __init__(self, first: Mapping, second: Mapping) -> None:
        self._first, self._second = first, second

    def __getitem__(self, key: Any) -> Any:
        return self._first[key] if key in self._first else self._second[key]

    def __iter__(self) -> Iterator[Any]:
        yield from self._first
        yield from (k for k in self._second if k not in self._first)

    def __len__(self) -> int:
        return len(self._first) + len(self._second)


def placeholder_class(module: str, qualname: str) -> type[Placeholder]:
    """A fresh Placeholder subclass standing for ``module.qualname`` (nothing is imported)."""
    return type(qualname.rsplit(".", 1)[-1] or "Placeholder", (Placeholder,),
                {"module": module, "qualname": qualname, "__module__": __name__})


# ---------------------------------------------------------------------------------------------
# Stand-in functions for the allow-listed globals
# ---------------------------------------------------------------------------------------------

def _ints(value: Any, what: str) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)) and len(value) > MAX_DIMS:
        raise FormatError(f"tensor {what} has {len(value)} dimensions (at most {MAX_DIMS})")
    if not isinstance(value, (tuple, list)) or not all(
            isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise FormatError(f"tensor {what} is not a tuple of integers: {brief(value)}")
    return tuple(value)


def _tensor(storage: Any, offset: Any, size: Any, stride: Any, dtype: str | None) -> Any:
    if isinstance(storage, UnsupportedTensor):
        return storage
    if not isinstance(storage, StorageRef):
        return UnsupportedTensor(f"tensor data is not a plain storage ({brief(storage)})")
    if dtype is None:
        return UnsupportedTensor("tensor has no dtype")
    shape, strides = _ints(size, "size"), _ints(stride, "stride")
    if not isinstance(offset, int) or offset < 0:
        raise FormatError(f"tensor storage offset is invalid: {brief(offset)}")
    if len(shape) != len(strides) or any(s < 0 for s in shape + strides):
        raise FormatError(f"tensor size {list(shape)} and stride {list(strides)} do not match")
    return TensorDesc(storage, offset, shape, strides, dtype)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> Any:
    return _tensor(storage, storage_offset, size, stride, getattr(storage, "dtype", None))


def _rebuild_tensor_v2(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any = False, backward_hooks: Any = None,
                       metadata: Any = None) -> Any:
    return _rebuild_tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any,
                       requires_grad: Any, backward_hooks: Any, dtype: Any,
                       metadata: Any = None) -> Any:
    if isinstance(dtype, DType) and dtype.dtype is None:
        return UnsupportedTensor(f"dtype torch.{dtype.torch_name} is not supported")
    if not isinstance(dtype, DType):
        raise FormatError(f"tensor dtype is not a torch dtype: {brief(dtype)}")
    return _tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data: Any, requires_grad: Any = False, backward_hooks: Any = None,
                       state: Any = None) -> Any:
    return data


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any = None) -> Any:
    if not callable(func) or not isinstance(args, tuple):
        raise FormatError("malformed _rebuild_from_type_v2 call")
    return func(*args)  # func is one of our own stand-ins (find_class only returns those)


def _unsupported(kind: str):
    def stand_in(*args: Any, **kwargs: Any) -> UnsupportedTensor:
        return UnsupportedTensor(f"{kind} tensors are not supported")
    stand_in.__name__ = f"unsupported_{kind.replace(' ', '_')}"
    return stand_in


def _torch_size(dims: Any = ()) -> tuple:
    return tuple(_ints(dims, "torch.Size"))


def _torch_device(*args: Any) -> str:
    if len(args) > 2 or not all(isinstance(a, (str, int)) and not isinstance(a, bool)
                                and len(str(a)) < 100 for a in args):
        raise FormatError(f"malformed torch.device{brief(args)}")
    return ":".join(str(a) for a in args)


def _first(value: Any, *rest: Any) -> Any:
    return value


def _as_list(*args: Any) -> list:
    return list(args[0]) if args and isinstance(args[0], (list, tuple)) else list(args)


def _codecs_encode(text: Any, encoding: str = "utf-8", errors: str = "strict") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1", "utf-8", "utf8", "ascii"):
        raise UnsafeFileError(f"pickle calls _codecs.encode with encoding {brief(encoding)}")
    return text.encode(encoding, errors="strict")


def _bytearray(data: Any = b"", *rest: Any) -> bytearray:
    if isinstance(data, str):
        data = _codecs_encode(data, *rest[:1])
    if not isinstance(data, (bytes, bytearray)):
        raise FormatError("bytearray from something other than bytes")
    return bytearray(data)


def _plain_dict(*args: Any, **kwargs: Any) -> dict:
    """``defaultdict``/``Counter`` stand-in: a plain dict (a default factory is never called)."""
    return dict(args[0]) if args and isinstance(args[0], dict) else {}


def _reconstructor(cls: Any, base: Any = None, state: Any = None) -> Any:
    if isinstance(cls, type) and issubclass(cls, Placeholder):
        return cls.__new__(cls)
    raise UnsafeFileError(f"pickle calls copyreg._reconstructor on {brief(cls)}")


#: Types that appear as values (a defaultdict's factory, copyreg's base): inert placeholders,
#: so that calling one from the pickle cannot build anything (bytes(10**12), set(range(...))).
PLACEHOLDER_BUILTINS = ("object", "list", "dict", "tuple", "int", "float", "str", "bool", "bytes",
                        "range")

#: Allow-listed globals that build a dict or set from the pickle's data, hashing every key or
#: element: the unpickler first checks what that hashing costs (:meth:`RestrictedUnpickler.hashing`).
HASHING: dict[str, Callable[..., Any]] = {
    "collections.OrderedDict": collections.OrderedDict,
    "collections.defaultdict": _plain_dict,
    "collections.Counter": _plain_dict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
}

#: Allow-listed globals -> our stand-ins (never the real objects, except immutable builtin types).
STANDINS: dict[str, Any] = {
    "builtins.slice": slice,
    "builtins.complex": complex,
    "builtins.bytearray": _bytearray,
    "_codecs.encode": _codecs_encode,
    "copyreg._reconstructor": _reconstructor,
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._tensor._rebuild_from_type": _rebuild_from_type_v2,
    "torch._utils._rebuild_qtensor": _unsupported("quantized"),
    "torch._utils._rebuild_sparse_tensor": _unsupported("sparse"),
    "torch._utils._rebuild_sparse_csr_tensor": _unsupported("sparse"),
    "torch._utils._rebuild_nested_tensor": _unsupported("nested"),
    "torch._utils._rebuild_meta_tensor_no_storage": _unsupported("meta (data-less)"),
    "torch._utils._rebuild_wrapper_subclass": _unsupported("wrapper-subclass"),
    "torch._utils._rebuild_device_tensor_from_numpy": _unsupported("numpy-backed device"),
    "torch._utils._rebuild_device_tensor_from_cpu_tensor": _unsupported("device"),
    "torch._utils._rebuild_xla_tensor": _unsupported("XLA"),
    "torch._utils._rebuild_mps_tensor": _unsupported("MPS"),
    "torch.storage._load_from_bytes": _unsupported("pickled-storage"),
    "torch.serialization._get_layout": _first,
    "torch.Size": _torch_size,
    "torch.device": _torch_device,
    "torch.jit._pickle.build_tensorlist": _as_list,
    "torch.jit._pickle.build_intlist": _as_list,
    "torch.jit._pickle.build_doublelist": _as_list,
    "torch.jit._pickle.build_boollist": _as_list,
    "torch.jit._pickle.build_genericlist": _as_list,
    "torch.jit._pickle.restore_type_tag": _first,
    "torch.jit._pickle.build_tensor_from_id": _unsupported("TorchScript tensor-table"),
}


def _torch_global(module: str, name: str) -> Any:
    """torch.* names that are not in STANDINS: storages, dtypes, nn classes; else refused."""
    if module in ("torch", "torch.cuda", "torch.storage") and name.endswith("Storage"):
        if name in ("UntypedStorage", "TypedStorage"):
            return StorageType(name, None)
        if name in STORAGE_DTYPES:
            return StorageType(name, STORAGE_DTYPES[name])
        if name in UNSUPPORTED_STORAGES:
            return StorageType(name, None, supported=False)
    if module == "torch" and name in TORCH_DTYPES:
        return DType(name, TORCH_DTYPES[name])
    if module == "torch" and name in UNSUPPORTED_TORCH_DTYPES:
        return DType(name, None)
    if module == "torch" and name in TORCH_QSCHEMES:
        return f"torch.{name}"
    if (module == "torch" and name == "Tensor") or (
            module.startswith(("torch.nn.", "torch.optim.")) and name.lstrip("_")[:1].isupper()):
        return placeholder_class(module, name)  # classes of whole-model/optimizer pickles
    raise UnsafeFileError(f"the pickle names torch global {module}.{name}, which is not on the "
                          f"allow-list of tensor rebuild functions; refusing to load it")


def canonical(module: str, name: str) -> tuple[str, str]:
    """Python 2 names (``__builtin__``, ``copy_reg``) as Python 3 has them."""
    module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def resolve_global(module: str, name: str) -> Any:
    """What a GLOBAL opcode gets: a stand-in, a Placeholder class, or UnsafeFileError."""
    module, name = canonical(module, name)
    qualified = f"{module}.{name}"
    if qualified in STANDINS:
        return STANDINS[qualified]
    if module == "builtins" and name in PLACEHOLDER_BUILTINS:
        return placeholder_class(module, name)
    root = module.split(".", 1)[0]
    if root == "torch":
        return _torch_global(module, name)
    if root in REFUSED_MODULES or module in REFUSED_MODULES:
        raise UnsafeFileError(f"the pickle names {qualified}, which can run code; refusing to "
                              f"load the file (nothing from it was executed)")
    return placeholder_class(module, name)


# ---------------------------------------------------------------------------------------------
# The pickle torch.save writes for a flat state dict
# ---------------------------------------------------------------------------------------------

class _Emitter:
    """Just enough of pickle protocol 2 to write what torch.save writes for a state dict."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")

    def str_(self, text: str) -> None:
        data = text.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(data)) + data

    def int_(self, value: int) -> None:
        if 0 <= value < 0x100:
            self.out += b"K" + struct.pack("<B", value)
        elif 0 <= value < 0x10000:
            self.out += b"M" + struct.pack("<H", value)
        elif -0x80000000 <= value < 0x80000000:
            self.out += b"J" + struct.pack("<i", value)
        else:
            data = pickle.encode_long(value)
            self.out += b"\x8a" + struct.pack("<B", len(data)) + data

    def int_tuple(self, values: Iterable[int]) -> None:
        self.out += b"("
        for value in values:
            self.int_(value)
        self.out += b"t"

    def empty_ordered_dict(self) -> None:
        self.global_("collections", "OrderedDict")
        self.out += b")R"  # EMPTY_TUPLE, REDUCE


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Row-major strides in elements, as torch computes them (empty dims count as 1)."""
    strides, step = [], 1
    for size in reversed(shape):
        strides.append(step)
        step *= max(size, 1)
    return tuple(reversed(strides))


def _numel(shape: tuple[int, ...]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count


@dataclass
class StateDictEntry:
    """One tensor to write: its name, shape, dtype name and storage key (``data/<key>``)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    key: str = field(default="")


def dump_state_dict(entries: Iterable[StateDictEntry]) -> bytes:
    """The data.pkl of ``torch.save(OrderedDict(name -> contiguous tensor))``."""
    em = _Emitter()
    em.empty_ordered_dict()
    em.out += b"("  # MARK for SETITEMS
    for entry in entries:
        em.str_(entry.name)
        em.global_("torch._utils", "_rebuild_tensor_v2")
        em.out += b"(("  # MARK args, MARK persistent id
        em.str_("storage")
        em.global_("torch", DTYPE_STORAGES[entry.dtype])
        em.str_(entry.key)
        em.str_("cpu")
        em.int_(_numel(entry.shape))
        em.out += b"tQ"  # TUPLE, BINPERSID
        em.int_(0)
        em.int_tuple(entry.shape)
        em.int_tuple(contiguous_strides(entry.shape))
        em.out += b"\x89"  # NEWFALSE: requires_grad
        em.empty_ordered_dict()  # backward hooks
        em.out += b"tR"  # TUPLE, REDUCE
    em.out += b"u."  # SETITEMS, STOP
    return bytes(em.out)
