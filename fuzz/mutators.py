"""Structural mutations of each format, driven by a ``random.Random`` (or hypothesis' one).

Not only byte flips: pickles are cut into opcodes and edited as opcodes (arguments replaced by
boundary values, memo references and DAGs inserted, globals swapped); zip archives are rebuilt
entry by entry (names, methods, sizes in the central directory); JSON headers and configs are
edited as trees (types swapped, keys dropped, nesting deepened); HDF5 files are edited through
h5py (attributes retyped, datasets relaid out, compressed, hard/soft/external linked); TOML rules
are rewritten as data. :func:`mutate` applies one to three of them to a :class:`~seeds.Case`.
"""
from __future__ import annotations

import io
import json
import pickletools
import re
import struct
import tempfile
import warnings
import zipfile
from pathlib import Path
from random import Random
from typing import Any, Callable

import h5py
import numpy as np

from seeds import Case

INTS = (0, 1, -1, 2, 3, 7, 255, 256, 1 << 16, (1 << 31) - 1, 1 << 31, 1 << 32, 1 << 40, 1 << 62,
        (1 << 63) - 1, 1 << 63, 1 << 64, 10 ** 30, -(1 << 63))
#: Values that pass the readers' checks, so that what follows (plans, writers) is reached too.
SMALL = (0, 1, 2, 3, 4, 5, 6, 8, 12, 16, 20, 36)
TEXTS = ("", "a", "0", "1", "storage", "cpu", "weight", "state_dict", "module.", "_orig_mod.",
         "..", "/", "a/b", "a\x00b", "\ud800", "é", "\u2028", "x" * 5000, "__metadata__",
         "transcoder_carried", "layers", "vars", "conv", "fc", "kernel", "bias", "0" * 40)
GLOBALS = (("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
           ("collections", "OrderedDict"), ("torch", "FloatStorage"), ("torch", "HalfStorage"),
           ("torch", "Size"), ("torch", "device"), ("builtins", "set"), ("builtins", "frozenset"),
           ("_codecs", "encode"), ("copyreg", "_reconstructor"), ("builtins", "list"),
           ("torch.nn.modules.linear", "Linear"), ("argparse", "Namespace"),
           ("__torch__.torch.nn.modules.conv", "Conv2d"), ("os", "system"),
           ("builtins", "eval"), ("builtins", "getattr"), ("torch", "load"),
           ("torch._tensor", "_rebuild_from_type_v2"), ("collections", "defaultdict"),
           ("torch", "BFloat16Storage"), ("torch", "LongStorage"), ("torch", "BoolStorage"),
           ("torch", "ComplexFloatStorage"), ("torch", "QInt8Storage"), ("torch", "ByteStorage"),
           ("torch", "UntypedStorage"), ("torch", "float8_e4m3fn"))


def an_int(rng: Random) -> int:
    """Half the time a value the checks accept (a small size, stride or offset), else a
    boundary value."""
    return rng.choice(SMALL) if rng.random() < 0.5 else rng.choice(INTS)


# -------------------------------------------------------------------------------- pickles

def _int_op(value: int) -> bytes:
    if 0 <= value < 256:
        return b"K" + bytes([value])
    if -(1 << 31) <= value < (1 << 31):
        return b"J" + struct.pack("<i", value)
    data = value.to_bytes((value.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(data)]) + data


def _text_op(text: str) -> bytes:
    data = text.encode("utf-8", "surrogatepass")
    return b"X" + struct.pack("<I", len(data)) + data


def _dag(rng: Random, base: int) -> bytes:
    levels = rng.choice((2, 8, 20, 40))
    out = b")\x94"
    for level in range(levels):
        index = struct.pack("<I", base + level)
        out += b"j" + index + b"j" + index + b"\x86\x94"
    return out


def _snippet(rng: Random, memo: int) -> bytes:
    kind = rng.randrange(8)
    if kind == 0:
        return _int_op(an_int(rng))
    if kind == 1:
        return _text_op(rng.choice(TEXTS))
    if kind == 2:
        module, name = rng.choice(GLOBALS)
        return b"c" + f"{module}\n{name}\n".encode()
    if kind == 3:
        return b"j" + struct.pack("<I", rng.randrange(max(memo, 1) + 3))
    if kind == 4:
        return _dag(rng, memo)
    if kind == 5:
        return b"r" + struct.pack("<I", rng.choice((memo, memo + 1, 1 << 27, (1 << 32) - 1)))
    return rng.choice((b"N", b")", b"(", b"t", b"\x94", b"b", b"s", b"u", b"a", b"e", b"R",
                       b"\x81", b"\x85", b"\x86", b"\x87", b"0", b"2", b"Q", b"]", b"}", b"\x8f",
                       b"\x90", b"\x91", b"\x88", b"\x89", b"1"))


def opcode_segments(data: bytes) -> tuple[list[bytes], bytes]:
    """The pickle at the start of ``data`` cut into opcodes, and what follows its STOP."""
    with warnings.catch_warnings():  # "invalid escape sequence" in STRING opcodes
        warnings.simplefilter("ignore", DeprecationWarning)
        starts = [pos for _, _, pos in pickletools.genops(io.BytesIO(data))]
    ends = starts[1:] + [starts[-1] + 1]
    return [data[a:b] for a, b in zip(starts, ends)], data[ends[-1]:]


def _replace_argument(rng: Random, segment: bytes) -> bytes:
    code = segment[:1]
    if code in (b"K", b"M", b"J", b"\x8a", b"I", b"L"):
        return _int_op(an_int(rng))
    if code in (b"X", b"\x8c", b"\x8d", b"V"):
        return _text_op(rng.choice(TEXTS))
    if code in (b"h", b"j", b"g"):
        return b"j" + struct.pack("<I", rng.choice((0, 1, 5, 100, (1 << 32) - 1)))
    if code == b"c":
        module, name = rng.choice(GLOBALS)
        return b"c" + f"{module}\n{name}\n".encode()
    return segment


def mutate_pickle(rng: Random, data: bytes) -> bytes:
    """One to four opcode-level edits of the pickle at the start of ``data``."""
    try:
        segments, tail = opcode_segments(data)
    except Exception:
        return flip_bytes(rng, data)
    memo = sum(s[:1] in (b"\x94", b"q", b"r") for s in segments)
    for _ in range(rng.randint(1, 4)):
        if not segments:
            break
        i = rng.randrange(len(segments))
        choice = rng.randrange(6)
        if choice == 0 and len(segments) > 2:
            del segments[i]
        elif choice == 1:
            segments.insert(i, segments[rng.randrange(len(segments))])
        elif choice == 2:
            segments.insert(i, _snippet(rng, memo))
        elif choice == 3:
            segments[i] = _replace_argument(rng, segments[i])
        elif choice == 4 and i + 1 < len(segments):
            segments[i], segments[i + 1] = segments[i + 1], segments[i]
        else:
            segments = segments[:i] + (segments[-1:] if rng.random() < 0.5 else [])
    return b"".join(segments) + tail


def mutate_legacy(rng: Random, data: bytes) -> bytes:
    """A legacy torch file is five pickles then raw storages: edit one of them."""
    parts, rest = [], data
    for _ in range(5):
        try:
            segments, rest = opcode_segments(rest)
        except Exception:
            break
        parts.append(b"".join(segments))
    if len(parts) < 5 or rng.random() < 0.15:
        return flip_bytes(rng, data)
    which = rng.randrange(6)
    if which == 5:
        rest = flip_bytes(rng, rest)
    else:
        parts[which] = mutate_pickle(rng, parts[which])
    return b"".join(parts) + rest


# ---------------------------------------------------------------------------------- bytes

def flip_bytes(rng: Random, data: bytes) -> bytes:
    data = bytearray(data)
    choice = rng.randrange(4)
    if choice == 0 and data:
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
    elif choice == 1:
        del data[rng.randrange(len(data) + 1):]
    elif choice == 2:
        at = rng.randrange(len(data) + 1)
        data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif len(data) >= 8:   # a length or offset field set to a boundary value
        at = rng.randrange(len(data) - 7)
        data[at:at + 8] = struct.pack("<Q", rng.choice((0, 1, 255, 1 << 31, 1 << 40, (1 << 64) - 1)))
    return bytes(data)


def mutate_text(rng: Random, data: bytes) -> bytes:
    """TorchScript code: lines the parser reads (class headers, parameter lists) made odd."""
    lines = data.split(b"\n")
    odd = (b"class X(Module):", b"  __parameters__ = [" + b'"w", ' * 1000 + b"]",
           b"  __parameters__ = " + b"[" * 500 + b"]" * 500, b"  __buffers__ = [1, 2]",
           b"  __parameters__ = [\"a\\x00\"]", b"class " + b"A" * 10000 + b":", b"\xff\xfe",
           b"  __parameters__ = [" + b"'" * 3 + b"]")
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(lines) + 1)
        if rng.random() < 0.6:
            lines.insert(at, rng.choice(odd))
        elif lines:
            del lines[min(at, len(lines) - 1)]
    return b"\n".join(lines)


# ------------------------------------------------------------------------------------ zip

def zip_entries(data: bytes) -> list[tuple[str, bytes, int]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i), i.compress_type) for i in zf.infolist()]


def build_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are one of the mutations
        with zipfile.ZipFile(buf, "w") as zf:
            for name, content, method in entries:
                zf.writestr(zipfile.ZipInfo(name), content, compress_type=method)
    return buf.getvalue()


def _patch_central_directory(rng: Random, data: bytes) -> bytes:
    """Declared sizes, CRC or local-header offset of one entry, set to a boundary value."""
    data = bytearray(data)
    entries = [i for i in range(len(data) - 46) if data[i:i + 4] == b"PK\x01\x02"]
    if not entries:
        return bytes(data)
    at = rng.choice(entries) + rng.choice((16, 20, 24, 42))   # crc, csize, usize, offset
    struct.pack_into("<I", data, at, rng.choice((0, 1, 0xFFFFFFFF, 0x7FFFFFFF, 1 << 20)))
    return bytes(data)


def mutate_zip(rng: Random, data: bytes, member: Callable[[Random, str, bytes], bytes]) -> bytes:
    """Edit the archive's entries (names, methods, order, members' contents) or its directory."""
    try:
        entries = zip_entries(data)
    except Exception:
        return flip_bytes(rng, data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(entries))
        name, content, method = entries[i]
        choice = rng.randrange(7)
        if choice <= 2:
            entries[i] = (name, member(rng, name, content), method)
        elif choice == 3:
            method = rng.choice((zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                                 zipfile.ZIP_LZMA))
            entries[i] = (name, content, method)
        elif choice == 4:
            prefix = name.split("/", 1)[0]
            entries[i] = (rng.choice((f"../{name}", f"/{name}", f"{prefix}/data/{rng.randrange(9)}",
                                      f"{prefix}/data.pkl", f"{prefix}/code/__torch__/x.py",
                                      name + "x", "config.json", "model.weights.h5")),
                          content, method)
        elif choice == 5:
            entries.insert(rng.randrange(len(entries) + 1), entries[i]) if rng.random() < 0.5 \
                else entries.pop(i)
        else:
            rng.shuffle(entries)
    out = build_zip(entries)
    return _patch_central_directory(rng, out) if rng.random() < 0.2 else out


# ----------------------------------------------------------------------------------- JSON

def _random_json(rng: Random, depth: int = 0) -> Any:
    choice = rng.randrange(9)
    if choice == 0:
        return an_int(rng)
    if choice == 1:
        return rng.choice(TEXTS)
    if choice == 2:
        return rng.choice((None, True, False, 1.5, -0.0, float("nan"), float("inf"), 1e308))
    if choice == 3:
        return [] if depth > 3 else [_random_json(rng, depth + 1) for _ in range(rng.randint(0, 3))]
    if choice == 4:
        return {} if depth > 3 else {rng.choice(TEXTS): _random_json(rng, depth + 1)
                                     for _ in range(rng.randint(0, 3))}
    if choice == 5:  # spliced in as text by dumps(): json itself would recurse too deep
        return f"\x01DEEP{rng.choice((10, 150, 3000, 100_000))}\x01"
    if choice == 6:
        return [rng.choice(INTS) for _ in range(rng.choice((2, 70, 100)))]
    return rng.choice(("F32", "F16", "BF16", "I64", "U8", "BOOL", "F8_E4M3", "C64", "U16"))


def _nodes(value: Any, path: tuple = ()) -> list[tuple]:
    found = [path]
    if isinstance(value, dict):
        for key, child in value.items():
            found += _nodes(child, path + (key,))
    elif isinstance(value, list):
        for index, child in enumerate(value):
            found += _nodes(child, path + (index,))
    return found


def mutate_tree(rng: Random, value: Any) -> Any:
    """Replace, drop, add or rename one node of a JSON value (returns the new root)."""
    path = rng.choice(_nodes(value))
    if not path:
        return _random_json(rng)
    parent = value
    for step in path[:-1]:
        parent = parent[step]
    key, choice = path[-1], rng.randrange(4)
    if choice == 0:
        parent[key] = _random_json(rng)
    elif choice == 1:
        del parent[key]
    elif choice == 2 and isinstance(parent, dict):
        parent[rng.choice(TEXTS)] = parent.pop(key)
    elif isinstance(parent, dict):
        parent[rng.choice(TEXTS)] = _random_json(rng)
    else:
        parent.insert(key, _random_json(rng))
    return value


_DEEP = re.compile(r'"\\u0001DEEP(\d+)\\u0001"')


def dumps(value: Any) -> bytes:
    """JSON text (ensure_ascii: lone surrogates become ``\\udXXX`` escapes), deep nests spliced in."""
    text = json.dumps(value)
    return _DEEP.sub(lambda m: "[" * int(m.group(1)) + "]" * int(m.group(1)), text).encode()


def _loads(data: bytes) -> Any:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


def mutate_json(rng: Random, data: bytes) -> bytes:
    value = _loads(data)
    if value is None:
        return flip_bytes(rng, data)
    for _ in range(rng.randint(1, 3)):
        value = mutate_tree(rng, value)
    return dumps(value)


def mutate_safetensors(rng: Random, data: bytes) -> bytes:
    """The JSON header as a tree (names, dtypes, shapes, offsets, metadata), its length field,
    or the data after it."""
    if len(data) < 8:
        return flip_bytes(rng, data)
    (size,) = struct.unpack("<Q", data[:8])
    header, body = data[8:8 + size], data[8 + size:]
    value = _loads(header)
    choice = rng.randrange(10)
    if choice < 6 or (choice == 6 and not isinstance(value, dict)):
        header = mutate_json(rng, header)
    elif choice == 6:
        if not isinstance(value.get("__metadata__"), dict):
            value["__metadata__"] = {}
        value["__metadata__"]["transcoder"] = mutate_json(rng, dumps({"version": 1, "steps": [
            {"torch": ["fc.weight"], "keras": ["fc/kernel"], "op": {"op": "permute", "axes": [1, 0]},
             "rule": "Linear", "layer": "fc"}], "carried": [], "torch_order": []})).decode()
        header = dumps(value)
    elif choice == 7:
        return struct.pack("<Q", rng.choice((0, 1, max(size - 1, 0), size + 8, 1 << 40))) + data[8:]
    else:
        body = flip_bytes(rng, body)
    return struct.pack("<Q", len(header)) + header + body


# ----------------------------------------------------------------------------------- HDF5

def _objects(f: h5py.File) -> list[str]:
    names = ["/"]
    f.visit(lambda name: names.append("/" + name))
    return names


def _attr_value(rng: Random, old: Any) -> Any:
    choice = rng.randrange(7)
    if choice == 0:
        return np.array([t.encode("utf-8", "surrogatepass") for t in rng.sample(TEXTS, 3)])
    if choice == 1:
        return np.arange(rng.choice((0, 1, 5)), dtype=rng.choice(("i8", "f4", "u1")))
    if choice == 2:
        return np.zeros((2, 2), "S3")
    if choice == 3 and isinstance(old, (str, bytes)):
        text = old.decode("utf-8", "replace") if isinstance(old, bytes) else old
        return mutate_json(rng, text.encode()).decode("utf-8", "replace")
    if choice == 4:
        return dumps(_random_json(rng)).decode()
    if choice == 5:
        return b"\xff\xfe\x00"
    return rng.choice(TEXTS).encode("utf-8", "surrogatepass")


def _retype_attribute(rng: Random, f: h5py.File) -> None:
    obj = f[rng.choice(_objects(f))]
    names = list(obj.attrs) + ["layer_names", "weight_names", "transcoder", "model_config",
                               "name", "transcoder_class_name", "dtype", "layer_names0"]
    name = rng.choice(names)
    if name in obj.attrs and rng.random() < 0.2:
        del obj.attrs[name]
    else:
        obj.attrs[name] = _attr_value(rng, obj.attrs.get(name))


def _relayout_dataset(rng: Random, f: h5py.File) -> None:
    datasets = [n for n in _objects(f) if isinstance(f.get(n, getlink=False), h5py.Dataset)]
    if not datasets:
        return
    name = rng.choice(datasets)
    old = f[name]
    shape, dtype = old.shape, old.dtype
    if shape is None or np.prod(shape, dtype=np.float64) * dtype.itemsize > 1 << 20:
        shape = (16, 4)  # a dataset an earlier mutation declared huge: not materialized
    attrs = dict(old.attrs)
    del f[name]
    choice = rng.randrange(6)
    if choice == 0:   # declared large, chunks never written: the fill value everywhere
        new = f.create_dataset(name, shape=(rng.choice((1 << 20, 1 << 24)), 64), dtype="f4",
                               chunks=(1024, 64), compression=rng.choice((None, "gzip")))
    elif choice == 1:
        new = f.create_dataset(name, data=np.zeros(rng.choice(((1024, 512), (64,), ())), "f4"),
                               compression="gzip" if rng.random() < 0.8 else None)
    elif choice == 2:
        new = f.create_dataset(name, data=np.zeros(shape or (1,),
                                                   rng.choice(("c8", "S4", "?", "u2", "f2", "V2"))))
    elif choice == 3:
        new = f.create_dataset(name, shape=rng.choice(((), (0,), (3, 0, 2), (1,) * 32)), dtype=dtype)
    elif choice == 4:
        new = f.create_dataset(name, data=np.ones(shape, dtype), chunks=True,
                               compression=rng.choice(("gzip", "lzf")), shuffle=True)
    else:
        f[name] = h5py.SoftLink(rng.choice(datasets)) if rng.random() < 0.5 else \
            h5py.ExternalLink("elsewhere.h5", "/x")
        return
    new.attrs.update(attrs)


def _relink(rng: Random, f: h5py.File) -> None:
    names = _objects(f)[1:]
    if not names:
        return
    source, target = rng.choice(names), rng.choice(names)
    group = f[target] if isinstance(f[target], h5py.Group) else f[target].parent
    link = f"{group.name.rstrip('/')}/{rng.choice(('0', '1', 'kernel', 'vars', 'x', 'layers'))}"
    if link in f:
        del f[link]
    choice = rng.randrange(3)
    if choice == 0:
        f[link] = f[source]                     # a hard link: shared or cyclic
    elif choice == 1:
        f[link] = h5py.SoftLink(source)
    else:
        layout = h5py.VirtualLayout(shape=(4,), dtype="f4")
        layout[:] = h5py.VirtualSource("other.h5", "/x", shape=(4,))
        f.create_virtual_dataset(link, layout)


def mutate_h5(rng: Random, data: bytes) -> bytes:
    """Attributes retyped, datasets relaid out, links added, through h5py; or bytes flipped."""
    if rng.random() < 0.1:
        return flip_bytes(rng, data)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.h5"
        path.write_bytes(data)
        try:
            with h5py.File(path, "a") as f:
                for _ in range(rng.randint(1, 3)):
                    rng.choice((_retype_attribute, _relayout_dataset, _relink))(rng, f)
        except Exception:  # an edit h5py refuses: keep what was written
            pass
        return path.read_bytes()


# ----------------------------------------------------------------------------------- TOML

def _toml_value(rng: Random) -> str:
    choice = rng.randrange(7)
    if choice == 0:
        return str(rng.choice(INTS))
    if choice == 1:
        return json.dumps(rng.choice(TEXTS)).replace("\\ud800", "\\u0000")
    if choice == 2:
        return rng.choice(("true", "1.5", "-0.0", "inf", "nan", "1e308", "[]"))
    if choice == 3:
        return "[" + ", ".join(str(rng.choice(INTS)) for _ in range(rng.randint(0, 5))) + "]"
    if choice == 4:
        return "[" * 200 + "]" * 200 if rng.random() < 0.3 else "[1.0, 0.0]"
    if choice == 5:
        return json.dumps(rng.choice(("Linear", "Conv2d", "Embedding", "carry", "MultiheadAttention",
                                      "LSTM", "BatchNorm2d", "nope", "*", "fc", "fc/kernel",
                                      "/kernel", "a/b/c", "conv*", "bn.*")))
    return "{ a = 1 }"


def mutate_rules(rng: Random, data: bytes) -> bytes:
    """Rules rewritten as data: sections and keys from the real vocabulary, values of any type;
    sometimes raw text edits."""
    if rng.random() < 0.15:
        return flip_bytes(rng, data)
    lines = data.decode("utf-8", "replace").splitlines()
    keys = ("match", "kind", "torch", "keras", "permute", "num_heads", "groups", "num_groups",
            "eps", "nonlinearity", "keras_shape", "other")
    for _ in range(rng.randint(1, 4)):
        choice = rng.randrange(4)
        at = rng.randrange(len(lines) + 1)
        if choice == 0:
            lines.insert(at, rng.choice(("[[layer]]", "[[tensor]]", "[layer]", "layer = 5",
                                         'tensor = ["a"]', "[other]", "[[layer.x]]")))
        elif choice in (1, 2):
            lines.insert(at, f"{rng.choice(keys)} = {_toml_value(rng)}")
        elif lines:
            del lines[min(at, len(lines) - 1)]
    return "\n".join(lines).encode("utf-8", "surrogatepass") + b"\n"


# ------------------------------------------------------------------------------- per case

def _torch_member(rng: Random, name: str, content: bytes) -> bytes:
    if name.endswith(".pkl"):
        return mutate_pickle(rng, content)
    if name.endswith(".py"):
        return mutate_text(rng, content)
    return flip_bytes(rng, content)


def _keras_member(rng: Random, name: str, content: bytes) -> bytes:
    if name.endswith(".json"):
        return mutate_json(rng, content)
    if name.endswith(".h5"):
        return mutate_h5(rng, content)
    return flip_bytes(rng, content)


def _index(rng: Random, case: Case) -> Case:
    if rng.random() < 0.7:
        return case.with_file(case.src, mutate_json(rng, case.files[case.src]))
    shard = rng.choice([n for n in case.files if n != case.src])
    return case.with_file(shard, mutate_safetensors(rng, case.files[shard]))


def _on_source(function: Callable[[Random, bytes], bytes]) -> Callable[[Random, Case], Case]:
    return lambda rng, case: case.with_file(case.src, function(rng, case.files[case.src]))


MUTATORS: dict[str, Callable[[Random, Case], Case]] = {
    "torch_zip": _on_source(lambda rng, d: mutate_zip(rng, d, _torch_member)),
    "torchscript": _on_source(lambda rng, d: mutate_zip(rng, d, _torch_member)),
    "legacy_pickle": _on_source(mutate_legacy),
    "safetensors": _on_source(mutate_safetensors),
    "index": _index,
    "legacy_h5": _on_source(mutate_h5),
    "weights_h5": _on_source(mutate_h5),
    "keras": _on_source(lambda rng, d: mutate_zip(rng, d, _keras_member)),
    "rules": lambda rng, case: case.with_file("rules.toml",
                                              mutate_rules(rng, case.files["rules.toml"])),
    "rules_keras": lambda rng, case: case.with_file("rules.toml",
                                                    mutate_rules(rng, case.files["rules.toml"])),
}


def mutate(rng: Random, fmt: str, case: Case) -> Case:
    """``case`` after one to three structural mutations of the format's kind. (A mutation
    that cannot apply to what earlier ones made, a zip no longer a zip, is skipped.)"""
    for _ in range(rng.randint(1, 3)):
        try:
            case = MUTATORS[fmt](rng, case)
        except (ValueError, IndexError, KeyError, TypeError, RecursionError, OSError,
                zipfile.BadZipFile, struct.error, UnicodeError):
            continue
    return case
