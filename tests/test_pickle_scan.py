"""The single-pass opcode scan (transcoder/formats/_torch/pickle_scan.py) against the scan it
replaced (tests/pickle_scan_reference.py: pickletools.genops plus a step per opcode name).

Both must give the same (opcodes, bytes) for every pickle, and refuse the same pickles with the
same message: the fixtures' pickles, the hostile builders' bombs, pickles of random data at
every protocol (plain ``pickle.dumps`` of ints, strings, tuples, dicts, sets: nothing here is
ever unpickled), random state dicts written by our own writer, and all of those mutated.
"""
from __future__ import annotations

import io
import pickle  # only pickle.dumps, to make inputs; nothing is unpickled
import struct
import zipfile

import pytest

pytest.importorskip("hypothesis", reason="the property tests need hypothesis: "
                                         "pip install '.[test]'")
from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

import hostile  # noqa: E402
import pickle_scan_reference as reference  # noqa: E402
from conftest import ROOT  # noqa: E402
from transcoder.errors import FormatError  # noqa: E402
from transcoder.formats._torch import pickle_scan  # noqa: E402
from transcoder.formats._torch.torch_pickle import StateDictEntry, dump_state_dict  # noqa: E402


def outcome(scan, data: bytes, prefix: bytes = b"") -> tuple:
    """What ``scan`` says about ``data`` read from a file at offset len(prefix)."""
    file = io.BytesIO(prefix + data)
    file.seek(len(prefix))
    try:
        return ("ok", scan(file))
    except FormatError as exc:
        return ("refused", str(exc))


def assert_same(data: bytes, prefix: bytes = b"") -> tuple:
    new = outcome(pickle_scan.scan, data, prefix)
    assert new == outcome(reference.scan, data, prefix)
    return new


def fixture_pickles() -> list[tuple[str, bytes]]:
    found = []
    for path in sorted((ROOT / "fixtures").glob("*.*")):
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as zf:
                found += [(f"{path.name}:{n}", zf.read(n)) for n in zf.namelist()
                          if n.endswith(".pkl")]
    return found


@pytest.mark.parametrize("name,data", fixture_pickles(), ids=lambda v: v if isinstance(v, str)
                         else "")
def test_fixture_pickles_scan_as_before(name, data):
    kind, (opcodes, nbytes) = assert_same(data)
    assert kind == "ok" and nbytes == len(data) and opcodes >= 3


def test_the_zoo_is_not_empty():
    assert len(fixture_pickles()) >= 4


HOSTILE = {
    "dag_as_dict_key": hostile.dag_as_dict_key(),
    "dag_in_frozenset": hostile.dag_in_frozenset(),
    "dag_to_torch_size": hostile.dag_to_torch_size(),
    "dag_as_persistent_id": hostile.dag_as_persistent_id(),
    "dag_key_through_ordered_dict": hostile.dag_key_through_ordered_dict(),
    "deep_tuple_key": hostile.deep_tuple_key(2_000),
    "memo_index_bomb": hostile.memo_index_bomb(),
    "module_dag": hostile.module_dag(),
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_pickles_are_refused_as_before(name):
    kind, message = assert_same(HOSTILE[name])
    # the others reach stand-ins, which the unpickler's meter refuses at run time
    if name not in ("dag_to_torch_size", "module_dag", "dag_key_through_ordered_dict"):
        assert kind == "refused", message


def test_a_pickle_after_other_bytes_reports_its_own_offsets():
    data = pickle.dumps({"a": (1, 2.5, "x" * 300)}, protocol=2)
    assert assert_same(data, prefix=b"\0" * 70_000) == ("ok", (13, len(data)))
    # an unknown opcode is reported at its position in the file, as pickletools does
    kind, message = assert_same(b"\x80\x02\xff.", prefix=b"junk")
    assert kind == "refused" and "at position 6" in message


def test_a_long_pickle_read_in_chunks_scans_as_in_one_piece():
    data = pickle.dumps([("k" * 100, i, (i, i + 1)) for i in range(20_000)], protocol=2)
    assert len(data) > 4 * pickle_scan.CHUNK
    kind, (opcodes, nbytes) = assert_same(data, prefix=b"\1" * 12_345)
    assert kind == "ok" and nbytes == len(data)


atoms = st.one_of(st.integers(-2**70, 2**70), st.floats(allow_nan=False), st.text(max_size=80),
                  st.binary(max_size=80), st.booleans(), st.none())
values = st.recursive(atoms, lambda inner: st.one_of(
    st.lists(inner, max_size=5), st.tuples(inner, inner), st.tuples(inner, inner, inner),
    st.lists(inner, max_size=4).map(tuple),
    st.dictionaries(st.one_of(st.text(max_size=10), st.integers()), inner, max_size=4),
    st.frozensets(st.integers(), max_size=4), st.sets(st.text(max_size=5), max_size=4)),
    max_leaves=30)


def shared(value):
    """The value twice in one tuple: the second copy is a memo GET of the first."""
    return (value, value, [value])


@settings(max_examples=300, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=values.map(shared), protocol=st.integers(0, 5))
def test_random_pickles_scan_as_before(value, protocol):
    data = pickle.dumps(value, protocol=protocol)
    assert assert_same(data) == ("ok", outcome(reference.scan, data)[1])


@settings(max_examples=400, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(value=values.map(shared), protocol=st.integers(0, 5), cut=st.integers(0, 10_000),
       flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), max_size=4))
def test_mutated_pickles_are_judged_as_before(value, protocol, cut, flips):
    data = bytearray(pickle.dumps(value, protocol=protocol))
    for at, byte in flips:
        data[at % len(data)] = byte
    assert_same(bytes(data[:max(1, len(data) - cut % 8)] if cut % 3 == 0 else data))


names = st.text(st.characters(min_codepoint=32, max_codepoint=0x2FFF), min_size=1, max_size=40)
entries = st.lists(st.tuples(names, st.lists(st.integers(0, 70_000), max_size=4),
                             st.sampled_from(["float32", "float16", "bfloat16", "int64", "bool"])),
                   min_size=0, max_size=60, unique_by=lambda e: e[0])


@settings(max_examples=150, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(entries=entries, flips=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)),
                                      max_size=3))
def test_random_state_dicts_scan_as_before(entries, flips):
    data = bytearray(dump_state_dict(
        StateDictEntry(name, tuple(shape), dtype, str(i)) for i, (name, shape, dtype) in
        enumerate(entries)))
    kind, result = assert_same(bytes(data))
    assert kind == "ok" and result[1] == len(data)
    for at, byte in flips:
        data[at % len(data)] = byte
    assert_same(bytes(data))


def test_truncated_arguments_are_refused_as_before():
    body = pickle.dumps({"name": (1, 300, 70_000, 2**40, "é" * 5)}, protocol=4)
    for end in range(len(body)):
        assert_same(body[:end])
    assert_same(b"\x80\x02X" + struct.pack("<I", 2**31) + b"abc")  # declares 2 GiB, holds 3



NESTED = {  # a pickle of one value nested ``depth`` times, by each way of building a tuple
    "TUPLE1": lambda depth: b"K\x01" + b"\x85" * depth,
    "TUPLE2": lambda depth: b"K\x01" + b"K\x02\x86" * depth,
    "TUPLE3": lambda depth: b"K\x01" + b"NN\x87" * depth,
    "TUPLE": lambda depth: b"(" * depth + b"K\x01" + b"t" * depth,
    # f((inner,)) nests two deeper: (callable, args) pairs around a 1
    "REDUCE": lambda depth: b"N" * (depth // 2 + 1) + b"K\x01" + b"\x85R" * (depth // 2 + 1),
}


@pytest.mark.parametrize("how", sorted(NESTED))
def test_the_nesting_bound_is_where_it_was(how):
    kinds = [assert_same(b"\x80\x02" + NESTED[how](depth) + b".")[0]
             for depth in range(pickle_scan.MAX_NESTING - 3, pickle_scan.MAX_NESTING + 2)]
    assert kinds[0] == "ok" and kinds[-1] == "refused", kinds


# ------------------------------------------------------------ whole reads: the same tensors


def read_tensors(path) -> list[tuple]:
    from transcoder.formats import pt
    from transcoder.formats.base import ReadOptions

    ckpt = pt.read(path, ReadOptions())
    return [(name, ref.shape, ref.dtype, ref.load().tobytes()) for name, ref in
            ckpt.tensors.items()]


@pytest.mark.parametrize("fixture", ["encoder.pt", "small_cnn.pt", "small_cnn_scripted.pt",
                                     "small_cnn_training.ckpt"])
def test_fixtures_read_to_the_same_tensors_with_either_scan(fixture, monkeypatch):
    from transcoder.formats._torch import unpickler

    path = ROOT / "fixtures" / fixture
    fast = read_tensors(path)
    monkeypatch.setattr(unpickler, "scan", reference.scan)
    assert read_tensors(path) == fast and fast


arrays = st.lists(st.tuples(names, st.lists(st.integers(0, 5), max_size=3),
                            st.sampled_from(["float32", "float16", "int64", "uint8"])),
                  min_size=1, max_size=12, unique_by=lambda e: e[0])


@settings(max_examples=40, derandomize=True, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(entries=arrays)
def test_random_state_dicts_read_to_the_same_tensors_with_either_scan(entries, tmp_path_factory,
                                                                      monkeypatch):
    import numpy as np

    from transcoder.checkpoint import LAYOUT_TORCH, Checkpoint, TensorRef
    from transcoder.formats import pt
    from transcoder.formats._torch import unpickler

    rng = np.random.default_rng(len(entries))
    refs = {}
    for name, shape, dtype in entries:
        name = name.replace("/", ".")
        data = (rng.standard_normal(shape) * 100).astype(dtype)
        refs[name] = TensorRef.from_array(name, data)
    path = tmp_path_factory.mktemp("sd") / "sd.pt"
    pt.write(Checkpoint(refs, LAYOUT_TORCH), path)
    fast = read_tensors(path)
    with monkeypatch.context() as patch:
        patch.setattr(unpickler, "scan", reference.scan)
        assert read_tensors(path) == fast
    assert [n for n, *_ in fast] == list(refs)
