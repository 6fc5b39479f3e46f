"""`transcode bulk` bucket -> bucket against an `aws s3 cp --recursive`-style copy of the same
objects, through moto's S3 server on 127.0.0.1 (a process of its own), in one invocation.

``python bench/bucket_bench.py [--files 8] [--file-mib 128] [--runs 3] [--jobs 2]``

The tree: ``--files`` checkpoints of ``--file-mib`` each (half ``.pt``, half ``.safetensors``,
bench/make_checkpoints.py's default mix) uploaded under ``s3://bench/src``. Each run, in
turn, in a process of its own (the server is never in the measured process):

- ``copy (server side)``: ``fs.copy(src, dst, recursive=True)``: CopyObject, the bytes never
  leave the server (what ``aws s3 cp --recursive s3://a s3://b`` does);
- ``get + put``: ``fs.get`` the objects to a local folder and ``fs.put`` them back under a new
  prefix: the bytes through this machine, as a conversion must move them;
- ``transcode bulk s3://bench/src s3://bench/out --to h5 --no-check --jobs J``.

Prints each run, the medians and the ratios of transcode to both copies. Wall-clock times on a
shared machine: compare ratios from one invocation, not times across invocations.
"""
from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUCKET = "bench"

COPY = """
import s3fs, sys
fs = s3fs.S3FileSystem()
fs.copy(f"{sys.argv[1]}/src/", f"{sys.argv[1]}/{sys.argv[2]}/", recursive=True)
"""
GET_PUT = """
import s3fs, sys, tempfile, shutil
fs = s3fs.S3FileSystem()
tmp = tempfile.mkdtemp()
try:
    fs.get(f"{sys.argv[1]}/src/", tmp + "/", recursive=True)
    fs.put(tmp + "/", f"{sys.argv[1]}/{sys.argv[2]}/", recursive=True)
finally:
    shutil.rmtree(tmp)
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict) -> subprocess.Popen:
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                               str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env["AWS_ENDPOINT_URL_S3"] = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return server
        except OSError:
            time.sleep(0.2)
    server.kill()
    raise SystemExit("moto's server did not start")


def upload_tree(env: dict, files: int, file_mib: float, work: Path) -> int:
    sys.path.insert(0, str(ROOT / "bench"))
    from make_checkpoints import write

    pt, st = write(work / "part", file_mib)
    os.environ.update(env)
    import boto3

    client = boto3.client("s3")
    client.create_bucket(Bucket=BUCKET)
    total = 0
    for i in range(files):
        path = pt if i % 2 else st
        client.upload_file(str(path), BUCKET, f"src/m{i:02d}{''.join(path.suffixes)}")
        total += path.stat().st_size
    shutil.rmtree(work / "part")
    return total


def timed(command: list[str], env: dict) -> float:
    started = time.perf_counter()
    subprocess.run(command, env=env, check=True, cwd=ROOT)
    return time.perf_counter() - started


def remove_prefix(env: dict, prefix: str) -> None:
    import boto3

    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL_S3"])
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix + "/")
    for page in pages:
        for item in page.get("Contents", []):
            client.delete_object(Bucket=BUCKET, Key=item["Key"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=8)
    parser.add_argument("--file-mib", type=float, default=128)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--jobs", type=int, default=2)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bucket-bench-"))
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
           "AWS_DEFAULT_REGION": "us-east-1", "XDG_CACHE_HOME": str(work / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    server = start_server(env)
    try:
        total = upload_tree(env, args.files, args.file_mib, work)
        url = f"s3://{BUCKET}"
        tools = {
            "copy (server side)": lambda i: [sys.executable, "-c", COPY, url, f"copy{i}"],
            "get + put": lambda i: [sys.executable, "-c", GET_PUT, url, f"getput{i}"],
            "transcode bulk": lambda i: [sys.executable, "-m", "transcoder", "bulk",
                                         f"{url}/src", f"{url}/out{i}", "--to", "h5", "-q",
                                         "--no-check", "--jobs", str(args.jobs)],
        }
        times: dict[str, list[float]] = {name: [] for name in tools}
        print(f"{args.files} files, {total / 2**20:.0f} MiB, bucket -> bucket through moto "
              f"on 127.0.0.1, --jobs {args.jobs}")
        for run in range(args.runs):
            for name, command in tools.items():
                seconds = timed(command(run), env)
                times[name].append(seconds)
                print(f"  run {run + 1}: {name:<20} {seconds:6.2f} s", flush=True)
                for prefix in (f"copy{run}", f"getput{run}", f"out{run}"):
                    remove_prefix(env, prefix)   # the server holds every object in memory
        median = {name: statistics.median(found) for name, found in times.items()}
        for name, seconds in median.items():
            print(f"{name:<20} median {seconds:6.2f} s  ({total / 2**20 / seconds:6.0f} MiB/s)")
        ours = median["transcode bulk"]
        print(f"transcode / get + put: {ours / median['get + put']:.2f} x; "
              f"transcode / server-side copy: {ours / median['copy (server side)']:.2f} x")
    finally:
        server.kill()
        server.wait()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
