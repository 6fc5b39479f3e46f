"""Variable-length attributes are checked in the object header before HDF5 decodes them
(transcoder.formats._hdf5.h5attrs): every header layout h5py writes reads back the exact values;
what cannot be checked or declares more than the file holds is refused."""
from __future__ import annotations

import struct

import h5py
import numpy as np
import pytest

from transcoder.errors import UnsafeFileError
from transcoder.formats._hdf5 import h5safety as h5s

VALUES = {f"a{i}": ("x" * (300 * i + 5)) + f"-{i}" for i in range(7)}   # 7: compact storage


def _write(path, libver="earliest", track_order=False, values=VALUES, later=True):
    """A group whose str attributes (variable-length) are written after enough datasets that
    the header needs continuation chunks; and the same on the root."""
    with h5py.File(path, "w", libver=libver, track_order=track_order) as f:
        grp = f.create_group("g", track_order=track_order)
        if not later:
            grp.attrs.update(values)
        for i in range(12):
            grp.create_dataset(f"d{i}", data=np.arange(i + 1, dtype=np.float32))
        if later:
            grp.attrs.update(values)
        f.attrs.update(values)
        f.attrs["strings"] = np.array(list(values.values()), dtype=h5py.string_dtype())
    return path


@pytest.mark.parametrize("libver, track_order, later", [
    ("earliest", False, True), ("earliest", False, False), ("latest", False, True),
    ("latest", True, True), ("earliest", True, True)])
def test_every_header_layout_reads_back_exactly(tmp_path, libver, track_order, later):
    path = _write(tmp_path / "m.h5", libver, track_order, later=later)
    f = h5s.open_file(path, path)
    try:
        version = h5py.h5o.get_info(f["g"].id).hdr.version
        assert version == (1 if libver == "earliest" and not track_order else 2)
        for obj in (f, f["g"]):
            for name, value in VALUES.items():
                assert h5s.attr_text(obj, name) == value
        assert h5s.attr_strings(f, "strings") == list(VALUES.values())
    finally:
        f.close()


def test_dense_attribute_storage_is_refused_in_one_line(tmp_path):
    """More than 8 attributes in a version 2 header go to a fractal heap, which is not walked
    here: a variable-length one there cannot be checked before reading, so it is refused."""
    many = {f"a{i}": f"value {i}" for i in range(20)}
    path = _write(tmp_path / "m.h5", "latest", values=many)
    f = h5s.open_file(path, path)
    try:
        with pytest.raises(UnsafeFileError, match="'a3' of /g is stored where it cannot be "
                                                  "checked before reading"):
            h5s.attr_text(f["g"], "a3")
    finally:
        f.close()


def test_a_declared_length_past_the_file_is_refused_before_reading(tmp_path):
    """(In a version 1 header: a version 2 one carries a checksum, which patching here breaks;
    the check after the walk is the same for both.)"""
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["name"] = "dense_1"
        f.attrs["names"] = np.array(["abc", "de"], dtype=h5py.string_dtype())
    data = bytearray(path.read_bytes())
    heap = data.find(b"GCOL")
    at = data.find(struct.pack("<IQ", 7, heap))   # "dense_1": its length, then its heap
    struct.pack_into("<I", data, at, len(data) + 1)
    at = data.find(struct.pack("<IQ", 2, heap))   # "de", the second of a list
    struct.pack_into("<I", data, at, len(data) - 2)   # with "abc": 1 byte more than the file
    path.write_bytes(bytes(data))
    f = h5s.open_file(path, path)
    try:
        for name, declared in (("name", len(data) + 1), ("names", len(data) + 1)):
            with pytest.raises(UnsafeFileError, match=f"attribute '{name}' of / declares "
                                                      f"{declared} bytes of values"):
                h5s.attr_strings(f, name)
    finally:
        f.close()


def test_fixed_length_attributes_are_not_walked(tmp_path, monkeypatch):
    """Keras' own attributes (layer_names, weight_names) are fixed-length: no header walk."""
    path = tmp_path / "m.h5"
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = np.array([b"conv", b"fc"])
    from transcoder.formats._hdf5 import h5attrs
    monkeypatch.setattr(h5attrs, "_attribute_data", lambda *a: pytest.fail("walked"))
    f = h5s.open_file(path, path)
    try:
        assert h5s.attr_strings(f, "layer_names") == ["conv", "fc"]
    finally:
        f.close()


def _v1_header(messages: list[tuple[int, bytes]]) -> bytes:
    """A version 1 object header at byte 0: the 16-byte prefix, then 8-byte message headers."""
    body = b"".join(struct.pack("<HHB3x", kind, len(data), 0) + data for kind, data in messages)
    return struct.pack("<BBHII4x", 1, 0, len(messages), 1, len(body)) + body


@pytest.mark.parametrize("case", ["itself", "many"])
def test_continuation_loops_and_floods_are_refused_without_reading_on(case):
    """A continuation that leads back to a chunk already read, or more chunks than any real
    header has: refused, after a bounded amount of reading."""
    from transcoder.formats._hdf5 import h5attrs

    if case == "itself":
        data = _v1_header([(h5attrs.CONTINUATION, struct.pack("<QQ", 16, 24))])
    else:
        data = _v1_header([(h5attrs.CONTINUATION, struct.pack("<QQ", 100 + i, 8))
                           for i in range(h5attrs.MAX_CHUNKS + 1)])
    data += b"\0" * 4096
    reads = []

    def read_at(at, n):
        reads.append(n)
        return data[at:at + n]

    with pytest.raises(UnsafeFileError, match="object header at byte .* is malformed"):
        list(h5attrs._messages(read_at, 0, (len(data), 8, 8), "m.h5"))
    assert sum(reads) <= 2 * len(data)


@pytest.mark.parametrize("dtype", [h5py.vlen_dtype(np.uint8), np.dtype([("a", "<i4")]),
                                   h5py.ref_dtype])
def test_attributes_that_are_neither_text_nor_numbers_are_refused_before_reading(cli, tmp_path,
                                                                                 dtype):
    """A variable-length sequence of bytes as ``keras_version`` (a mutated file made h5py 3.14
    crash reading it, SIGSEGV: found by the fuzz campaign), a compound, a reference."""
    from hostile import assert_refused, legacy_h5

    src = legacy_h5(tmp_path / "m.h5", {"fc": {"kernel": np.ones((3, 4), np.float32)}})
    with h5py.File(src, "a") as f:
        value = np.empty((), dtype=dtype)
        if dtype.kind == "O" and h5py.check_vlen_dtype(dtype) is not None:
            value[()] = np.frombuffer(b"2.1.6", np.uint8)
        elif h5py.check_ref_dtype(dtype) is not None:
            value[()] = f.ref
        f.attrs.create("keras_version", value, dtype=dtype)
    code, _, err = cli(src, tmp_path / "out.safetensors", "--no-check")
    line = assert_refused(code, err, src, tmp_path, {"m.h5"})
    assert "attribute 'keras_version' of / is neither text nor numbers" in line


def test_a_driver_without_a_descriptor_is_read_by_path(tmp_path):
    """Header walks read the file through libhdf5's descriptor; a driver without one (other
    than the default sec2) is read by path instead, not refused."""
    class NoDescriptor:
        class id:  # noqa: N801 (stands for h5py's FileID)
            @staticmethod
            def get_vfd_handle():
                raise RuntimeError("file driver has no `get_vfd_handle' method")

    path = tmp_path / "m.h5"
    path.write_bytes(b"0123456789")
    assert h5s._reader(NoDescriptor, path)(3, 4) == b"3456"
    f = h5py.File(_write(tmp_path / "n.h5"), "r")
    try:
        assert h5s._reader(f, tmp_path / "n.h5")(0, 8) == b"\x89HDF\r\n\x1a\n"
    finally:
        f.close()
