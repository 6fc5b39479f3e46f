"""fsspec URLs as SRC and DST, against a real S3 server (moto's, on 127.0.0.1): bucket -> bucket
and bucket -> local conversions are the same bytes as local ones, nothing partial is ever under
DST's name, and a missing key, an existing DST without --force, and a denied write are one line
with exit code 2."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from safetensors.numpy import load_file

from conftest import FIXTURES, assert_bit_exact

moto_server = pytest.importorskip("moto.server", reason="moto[server] runs the S3 server")
pytest.importorskip("s3fs", reason="s3fs is the s3:// filesystem")
boto3 = pytest.importorskip("boto3")

BUCKET = "models"


@pytest.fixture(scope="module")
def s3_endpoint():
    server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A fresh bucket holding the encoder fixture; credentials and endpoint from the
    environment, where every boto-based client reads them."""
    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1",
                       "AWS_ENDPOINT_URL_S3": s3_endpoint}.items():
        monkeypatch.setenv(key, value)
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    client.upload_file(str(FIXTURES / "encoder.pt"), BUCKET, "in/encoder.pt")
    client.upload_file(str(FIXTURES / "encoder.safetensors"), BUCKET, "in/encoder.safetensors")
    yield client
    for item in client.list_objects_v2(Bucket=BUCKET).get("Contents", []):
        client.delete_object(Bucket=BUCKET, Key=item["Key"])
    client.delete_bucket(Bucket=BUCKET)
    s3fs.S3FileSystem.clear_instance_cache()


def _keys(client) -> list[str]:
    return sorted(o["Key"] for o in client.list_objects_v2(Bucket=BUCKET).get("Contents", []))


def _local_reference(cli, tmp_path, name: str) -> Path:
    out = tmp_path / "reference" / name
    out.parent.mkdir(exist_ok=True)
    code, _, err = cli(FIXTURES / "encoder.pt", out, "--no-check")
    assert code == 0, err
    return out


def test_bucket_to_bucket_is_the_local_conversion(cli, s3, tmp_path):
    reference = _local_reference(cli, tmp_path, "encoder.safetensors")
    code, out, err = cli(f"s3://{BUCKET}/in/encoder.pt", f"s3://{BUCKET}/out/encoder.safetensors",
                         "--no-check")
    assert code == 0, err
    assert _keys(s3) == ["in/encoder.pt", "in/encoder.safetensors", "out/encoder.safetensors"]
    s3.download_file(BUCKET, "out/encoder.safetensors", str(tmp_path / "got.safetensors"))
    got, want = load_file(tmp_path / "got.safetensors"), load_file(reference)
    assert sorted(got) == sorted(want)
    for key in want:
        assert_bit_exact(got[key], want[key], key)
    assert f"s3://{BUCKET}/out/encoder.safetensors" in out + err
    assert "testing" not in out + err          # no credential is printed


def test_bucket_to_local_with_the_default_check(cli, s3, tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "encoder.h5"
    code, stdout, err = cli(f"s3://{BUCKET}/in/encoder.safetensors", out)
    assert code == 0, err
    assert "check passed" in stdout + err
    reference = _local_reference(cli, tmp_path, "encoder.h5")
    import h5py

    with h5py.File(out) as a, h5py.File(reference) as b:
        names = []
        a.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
        assert names
        for name in names:
            assert_bit_exact(a[name][()], b[name][()], name)


def test_refusals_are_one_line_and_exit_2(cli, s3, tmp_path):
    cases = [
        ((f"s3://{BUCKET}/in/absent.pt", tmp_path / "x.h5"), "no such file"),
        ((f"s3://{BUCKET}/in/encoder.pt", f"s3://{BUCKET}/in/encoder.safetensors"),
         "already exists"),
        ((f"s3://{BUCKET}/in/encoder.pt", "s3://no-such-bucket-here/x.safetensors"),
         "s3://no-such-bucket-here/x.safetensors"),
    ]
    before = _keys(s3)
    for args, words in cases:
        code, out, err = cli(*args, "--no-check")
        assert code == 2, (args, err)
        assert words in err and len(err.strip().splitlines()) == 1, err
        assert _keys(s3) == before                     # nothing partial, nothing replaced
    assert not (tmp_path / "x.h5").exists()


def test_force_replaces_and_leaves_no_temporary_keys(cli, s3, tmp_path):
    dst = f"s3://{BUCKET}/in/encoder.safetensors"
    code, _, err = cli(f"s3://{BUCKET}/in/encoder.pt", dst, "--no-check", "--force")
    assert code == 0, err
    assert _keys(s3) == ["in/encoder.pt", "in/encoder.safetensors"]


def test_file_urls_are_local_paths(cli, tmp_path):
    out = tmp_path / "e.safetensors"
    code, _, err = cli(f"file://{FIXTURES / 'encoder.pt'}", f"file://{out}", "--no-check")
    assert code == 0, err
    assert out.exists()
