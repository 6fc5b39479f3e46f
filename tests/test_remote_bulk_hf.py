"""`transcode bulk` over a bucket holding Hugging Face model folders (moto's S3 server on
127.0.0.1): the bucket's listing is planned as the same tree on disk is (each folder, its
config.json and weights, one source named after it; a hub cache snapshot too), and its outputs
are byte for byte the local bulk run's, read by range, downloaded (``--checksums``), or
written from a local tree to a bucket."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("USE_TF", "0")
pytest.importorskip("moto.server", reason="moto[server] runs the S3 server")
pytest.importorskip("s3fs", reason="s3fs is the s3:// filesystem")
pytest.importorskip("boto3")
pytest.importorskip("transformers", reason="transformers builds the tiny model")

import s3server  # noqa: E402
from test_bulk import bulk  # noqa: E402
from test_bulk_hf_folders import FOLDERS, make_tree  # noqa: E402
from test_remote_bulk import BUCKET, _objects, _outputs, endpoint, s3  # noqa: E402,F401
from transcoder.bulk.manifest import NAME as MANIFEST  # noqa: E402


@pytest.fixture
def hf_tree(s3, tmp_path):
    """test_bulk_hf_folders' tree (model folders, a sharded one, pytorch_model.bin, a hub
    cache snapshot, a plain .pt) under s3://models/src, and its local bulk run."""
    src = tmp_path / "src"
    make_tree(src)
    s3server.upload_tree(s3, BUCKET, src, "src")
    reference = tmp_path / "reference"
    assert bulk(src, reference).exit_code == 0
    assert set(_outputs(reference)) == {output for _, output in FOLDERS.values()}
    return src, reference


def test_the_listing_is_planned_as_the_tree_on_disk(hf_tree, tmp_path):
    from transcoder.bulk.bucket import scan_bucket
    from transcoder.bulk.tree import scan
    from transcoder.remote import listing

    src, _ = hf_tree
    url = f"s3://{BUCKET}/src"
    on_disk = scan(src, tmp_path / "dst", "h5")
    in_bucket = scan_bucket(url, listing(url), "h5", None)
    assert [(s.path, s.output, s.files) for s in in_bucket.sources] == \
        [(s.path, s.output, s.files) for s in on_disk.sources]
    assert "a/bert/tokenizer.json" in in_bucket.ignored
    picked = scan_bucket(url, listing(url), "h5", "*.bin").sources   # weights' name selects
    assert [s.path for s in picked] == ["bin"]


@pytest.mark.parametrize("how", ["by range", "downloaded"])
def test_model_folders_in_a_bucket_convert_as_the_local_run(cli, hf_tree, tmp_path, how):
    _, reference = hf_tree
    local = tmp_path / "local"
    code, _, err = cli("bulk", f"s3://{BUCKET}/src", local, "--to", "h5", "-j", "2",
                       "--no-check", *(["--checksums"] if how == "downloaded" else []))
    assert code == 0, err
    assert _outputs(local) == _outputs(reference)       # byte for byte
    again = bulk(f"s3://{BUCKET}/src", local)
    assert again.exit_code == 0 and again.results == []


def test_local_model_folders_to_a_bucket_are_the_local_run(cli, s3, hf_tree):
    src, reference = hf_tree
    code, _, err = cli("bulk", src, f"s3://{BUCKET}/out", "--to", "h5", "-j", "1",
                       "--no-check")
    assert code == 0, err
    got = _objects(s3, "out")
    assert got.pop(MANIFEST)
    assert got == _outputs(reference)
