"""`transcode bulk` over buckets, against a real S3 server (moto's, on 127.0.0.1): bucket ->
bucket, bucket -> local and local -> bucket are byte for byte the local bulk run of the same
tree; the manifest is an object and a rerun trusts it; a run killed with SIGKILL resumes,
leaving no temporary key; --checksums hashes the objects' bytes; a bucket that denies
writes, a missing prefix or bucket are one line and exit code 2; Ray converts bucket ->
bucket with the same manifest."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("moto.server", reason="moto[server] runs the S3 server")
pytest.importorskip("s3fs", reason="s3fs is the s3:// filesystem")
boto3 = pytest.importorskip("boto3")

import s3server  # noqa: E402
from conftest import ROOT  # noqa: E402
from test_bulk import bulk, make_tree, save, state  # noqa: E402
from transcoder.bulk import bucket_manifest  # noqa: E402
from transcoder.bulk.manifest import NAME as MANIFEST  # noqa: E402

BUCKET, LOCKED = "models", "locked"


@pytest.fixture(scope="module")
def endpoint():
    with s3server.running() as url:
        yield url


@pytest.fixture
def s3(endpoint, monkeypatch, tmp_path):
    """A fresh bucket; the server's address and dummy credentials in the environment; the
    local journals of bucket destinations in this test's own folder."""
    for key, value in s3server.environment(endpoint).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    s3server.clear_caches()
    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    yield client
    for name in (BUCKET, LOCKED):
        try:
            s3server.empty_and_delete(client, name)
        except client.exceptions.NoSuchBucket:
            pass
    s3server.clear_caches()


@pytest.fixture
def tree(s3, tmp_path):
    """The mixed tree of test_bulk (a sharded checkpoint, files that are not checkpoints)
    under s3://models/src, and its local bulk conversion to .h5 for reference."""
    src = tmp_path / "src"
    sources = make_tree(src)
    s3server.upload_tree(s3, BUCKET, src, "src")
    reference = tmp_path / "reference"
    assert bulk(src, reference).exit_code == 0
    return src, reference, sources


def _objects(client, prefix: str) -> dict[str, bytes]:
    return {k[len(prefix) + 1:]: client.get_object(Bucket=BUCKET, Key=k)["Body"].read()
            for k in s3server.keys(client, BUCKET, prefix + "/")}


def _outputs(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in folder.rglob("*.h5")}


def _manifest(client, prefix: str) -> list[dict]:
    body = client.get_object(Bucket=BUCKET, Key=f"{prefix}/{MANIFEST}")["Body"].read()
    return [json.loads(line) for line in body.splitlines()]


def test_bucket_to_bucket_is_the_local_bulk_run_and_a_rerun_redoes_nothing(cli, s3, tree):
    _, reference, sources = tree
    code, out, err = cli("bulk", f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", "--to", "h5",
                         "-j", "2", "--no-check")
    assert code == 0, err
    got = _objects(s3, "out")
    assert got.pop(MANIFEST)
    assert got == _outputs(reference)           # byte for byte; nothing else (no .tmp key)
    lines = _manifest(s3, "out")
    assert sorted(e["source"] for e in lines) == sorted(sources)
    assert all(e["status"] == "done" and e["etag"] and e["output_etag"] for e in lines)
    assert "testing" not in out + err           # no credential is printed

    again = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out")
    assert again.exit_code == 0 and again.results == [] and len(again.reused) == 5
    assert again.manifest == f"s3://{BUCKET}/out/{MANIFEST}"

    s3.delete_object(Bucket=BUCKET, Key="out/vision/cnn.h5")          # an output gone
    s3.put_object(Bucket=BUCKET, Key="out/top.h5", Body=b"damaged")    # one replaced
    third = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out")
    assert sorted(r["output"] for r in third.results) == ["top.h5", "vision/cnn.h5"]
    got = _objects(s3, "out")
    got.pop(MANIFEST)
    assert got == _outputs(reference)


def test_bucket_to_local_and_local_to_bucket_are_the_local_bulk_run(cli, s3, tree, tmp_path):
    src, reference, _ = tree
    local = tmp_path / "local"
    code, _, err = cli("bulk", f"s3://{BUCKET}/src", local, "--to", "h5", "-j", "1",
                       "--no-check")
    assert code == 0, err
    assert _outputs(local) == _outputs(reference)
    assert (local / MANIFEST).exists() and not list(local.rglob("*.tmp"))
    assert bulk(f"s3://{BUCKET}/src", local).results == []      # the local manifest trusted

    code, _, err = cli("bulk", src, f"s3://{BUCKET}/up", "--to", "h5", "--no-check")
    assert code == 0, err
    got = _objects(s3, "up")
    assert got.pop(MANIFEST) and got == _outputs(reference)
    assert bulk(src, f"s3://{BUCKET}/up").results == []


def test_bucket_sources_are_read_by_range_not_downloaded_whole(s3, tree, tmp_path, monkeypatch):
    """Without --checksums a bucket source is read as a single conversion reads a URL: the
    header by range, each tensor's bytes by range when written; no object is downloaded whole
    (the run is in this process: --jobs 1), and the outputs are the local run's."""
    import s3fs

    _, reference, _ = tree
    whole, ranged = [], []

    def no_whole_download(self, rpath, lpath, **kwargs):
        whole.append(rpath)
        raise AssertionError(f"{rpath} downloaded whole")

    real_cat = s3fs.S3FileSystem._cat_file

    async def counted(self, path, version_id=None, start=None, end=None):
        data = await real_cat(self, path, version_id=version_id, start=start, end=end)
        ranged.append((path, start, end, len(data)))
        return data

    monkeypatch.setattr(s3fs.S3FileSystem, "_get_file", no_whole_download)
    monkeypatch.setattr(s3fs.S3FileSystem, "_cat_file", counted)
    local = tmp_path / "ranged"
    report = bulk(f"s3://{BUCKET}/src", local)
    assert report.exit_code == 0 and whole == []
    assert _outputs(local) == _outputs(reference)                   # byte for byte
    assert ranged and all(start is not None for _, start, _, _ in ranged)
    assert max(n for *_, n in ranged) <= 4 << 20                      # blocks, not objects


def test_checksums_hash_the_objects_bytes_and_decide_when_only_the_time_changed(s3, tree):
    report = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", checksums=True)
    assert report.exit_code == 0
    by_source = {e["source"]: e for e in _manifest(s3, "out")}
    entry = by_source["vision/cnn.pt"]
    body = s3.get_object(Bucket=BUCKET, Key="src/vision/cnn.pt")["Body"].read()
    assert entry["sha256"] == hashlib.sha256(body).hexdigest()
    output = s3.get_object(Bucket=BUCKET, Key="out/vision/cnn.h5")["Body"].read()
    assert entry["output_sha256"] == hashlib.sha256(output).hexdigest()

    time.sleep(1.1)   # S3 times are in seconds: the same bytes uploaded again are newer
    s3.put_object(Bucket=BUCKET, Key="src/vision/cnn.pt", Body=body)
    s3.put_object(Bucket=BUCKET, Key="src/top.safetensors", Body=b"\0" * 16)   # changed
    again = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", checksums=True)
    assert [r["source"] for r in again.results] == ["top.safetensors"]   # cnn.pt: hash equal
    without = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/other")
    s3.put_object(Bucket=BUCKET, Key="src/text/embed.pt",
                  Body=s3.get_object(Bucket=BUCKET, Key="src/text/embed.pt")["Body"].read())
    redone = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/other")
    assert without.failed and sorted(r["source"] for r in redone.results) == [
        "text/embed.pt", "top.safetensors"]   # no hash: a newer time is redone (top: still bad)


def test_refusals_are_one_line_and_exit_2(cli, s3, tree, tmp_path):
    s3.create_bucket(Bucket=LOCKED)
    s3.put_bucket_policy(Bucket=LOCKED, Policy=json.dumps({
        "Version": "2012-10-17", "Statement": [{
            "Effect": "Deny", "Principal": "*", "Action": "s3:PutObject",
            "Resource": f"arn:aws:s3:::{LOCKED}/*"}]}))
    src, _, _ = tree
    cases = [
        (("bulk", f"s3://{BUCKET}/src", f"s3://{LOCKED}/out", "--to", "h5"), "permission denied"),
        (("bulk", src, f"s3://{LOCKED}/out", "--to", "h5"), "permission denied"),
        (("bulk", f"s3://{BUCKET}/absent", tmp_path / "o1", "--to", "h5"), "no such folder"),
        (("bulk", "s3://no-such-bucket-here/src", tmp_path / "o2", "--to", "h5"),
         "s3://no-such-bucket-here/src"),
        (("bulk", f"s3://{BUCKET}/src", f"s3://{BUCKET}/src/", "--to", "h5"), "must differ"),
        ((f"s3://{BUCKET}/src/vision/cnn.pt", f"s3://{LOCKED}/cnn.safetensors", "--no-check"),
         "permission denied"),
        ((f"s3://{BUCKET}/src/vision/absent.pt", tmp_path / "x.h5", "--no-check"),
         "no such file"),
    ]
    before = s3server.keys(s3, BUCKET)
    for args, words in cases:
        code, out, err = cli(*args, "--no-check") if args[0] == "bulk" else cli(*args)
        assert code == 2, (args, err)
        assert words in err and len(err.strip().splitlines()) == 1, (args, err)
        assert s3server.keys(s3, LOCKED) == [] and s3server.keys(s3, BUCKET) == before
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "o1").exists()


def test_kill_9_after_the_first_record_then_rerun_resumes(s3, tmp_path, endpoint):
    src = tmp_path / "src"
    sources = {}
    for i in range(24):
        rel = f"batch{i % 3}/model{i:03d}" + (".pt" if i % 2 else ".safetensors")
        save(src / rel, state(i, ("cnn", "conv1d", "text")[i % 3]))
        sources[rel] = rel.rsplit(".", 1)[0] + ".h5"
    s3server.upload_tree(s3, BUCKET, src, "src")
    reference = tmp_path / "reference"
    assert bulk(src, reference).exit_code == 0
    env = {**os.environ, **s3server.environment(endpoint),
           "XDG_CACHE_HOME": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "transcoder", "bulk", f"s3://{BUCKET}/src",
                             f"s3://{BUCKET}/out", "--to", "h5", "-j", "1", "-q", "--no-check"],
                            cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while proc.poll() is None and time.monotonic() < deadline:
            if any(e["status"] == "done" for e in _manifest_or_none(s3)):
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert proc.returncode == -signal.SIGKILL, "finished before it could be killed"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    done_at_kill = {e["source"] for e in _manifest_or_none(s3) if e["status"] == "done"}
    assert 1 <= len(done_at_kill) < len(sources), "the kill should land part-way"

    report = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", jobs=2)
    assert report.exit_code == 0
    assert done_at_kill <= {e["source"] for e in report.reused}
    assert not done_at_kill & {r["source"] for r in report.results}
    assert len(report.reused) + len(report.results) == len(sources)
    got = _objects(s3, "out")
    assert got.pop(MANIFEST)
    assert got == _outputs(reference)            # all of them, bit-exact, no temporary key
    assert len(_manifest(s3, "out")) == len(sources)


def _manifest_or_none(client) -> list[dict]:
    try:
        body = client.get_object(Bucket=BUCKET, Key=f"out/{MANIFEST}")["Body"].read()
    except client.exceptions.NoSuchKey:
        return []
    return [json.loads(line) for line in body.splitlines() if line.strip()]


def test_a_record_reaches_the_bucket_only_after_its_output(s3, tree, monkeypatch):
    """When a line is published, the output it says done is already under its name."""
    seen = []
    publish = bucket_manifest.BucketManifest.publish

    def checking(self):
        for entry in self.entries.values():
            if entry["status"] == "done":
                s3.head_object(Bucket=BUCKET, Key=f"out/{entry['output']}")   # raises if absent
                seen.append(entry["output"])
        publish(self)

    monkeypatch.setattr(bucket_manifest.BucketManifest, "publish", checking)
    monkeypatch.setattr(bucket_manifest, "PUBLISH_EVERY", 0.0)   # a rewrite per record
    assert bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out").exit_code == 0
    assert len(set(seen)) == 5


@pytest.mark.slow
def test_ray_converts_bucket_to_bucket_with_the_manifest(s3, tree):
    ray = pytest.importorskip("ray")
    _, reference, _ = tree
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        report = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", engine="ray")
        assert report.exit_code == 0 and len(report.converted) == 5
        got = _objects(s3, "out")
        assert got.pop(MANIFEST) and got == _outputs(reference)
        s3.delete_object(Bucket=BUCKET, Key="out/top.h5")
        again = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out", engine="ray")
        assert [r["output"] for r in again.results] == ["top.h5"] and len(again.reused) == 4
        got = _objects(s3, "out")
        assert got.pop(MANIFEST) and got == _outputs(reference)
    finally:
        ray.shutdown()


def test_a_key_with_dot_dot_parts_is_skipped_never_written_outside(s3, tmp_path):
    body = (tmp_path / "m.pt")
    save(body, state(1))
    for key in ("src/a/../../../evil.pt", "src/b//twice.pt", "src/ok.pt"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=body.read_bytes())
    assert "src/a/../../../evil.pt" in s3server.keys(s3, BUCKET)     # the store keeps it as is
    dst = tmp_path / "deep" / "dst"
    report = bulk(f"s3://{BUCKET}/src", dst)
    assert report.exit_code == 0 and [r["output"] for r in report.converted] == ["ok.h5"]
    assert sorted(s["source"] for s in report.skipped) == ["a/../../../evil.pt", "b//twice.pt"]
    assert sorted(p.name for p in tmp_path.rglob("*.h5")) == ["ok.h5"]


def test_the_journal_fills_in_what_the_manifest_object_had_not_yet_and_vice_versa(
        s3, tree, tmp_path):
    """A killed run's last records may be only in this machine's journal; another machine has
    only the object. Either way a rerun trusts what is done and redoes nothing."""
    assert bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out").exit_code == 0
    lines = s3.get_object(Bucket=BUCKET, Key=f"out/{MANIFEST}")["Body"].read().splitlines()
    s3.put_object(Bucket=BUCKET, Key=f"out/{MANIFEST}", Body=lines[0] + b"\n")   # lagging
    again = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out")
    assert again.results == [] and len(again.reused) == 5
    assert len(_manifest(s3, "out")) == 5                     # rewritten whole

    journal = bucket_manifest.journal_folder(f"s3://{BUCKET}/out")
    assert journal.is_relative_to(tmp_path / "cache")
    (journal / MANIFEST).unlink()                              # a machine without the journal
    third = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out")
    assert third.results == [] and len(third.reused) == 5


def test_a_bad_object_fails_alone_named_by_its_url(s3, tree, tmp_path):
    s3.put_object(Bucket=BUCKET, Key="src/vision/broken.pt", Body=b"PK\x03\x04 not a zip")
    report = bulk(f"s3://{BUCKET}/src", f"s3://{BUCKET}/out")
    assert report.exit_code == 2 and len(report.converted) == 5
    [error] = [r["error"] for r in report.failed]
    assert error.startswith(f"s3://{BUCKET}/src/vision/broken.pt: ") and "transcoder-" not in error
    assert not [k for k in s3server.keys(s3, BUCKET, "out/") if k.endswith(".tmp")]
