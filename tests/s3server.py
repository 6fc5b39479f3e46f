"""A real S3 server for tests: moto's, on 127.0.0.1, on a free port, in this process's
threads. Clients find it where every boto-based client looks (``AWS_ENDPOINT_URL_S3``), with
dummy credentials; subprocesses get the same variables (:func:`environment`)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def running() -> Iterator[str]:
    """The server's endpoint URL while it runs."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()


def environment(endpoint: str) -> dict[str, str]:
    return {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL_S3": endpoint}


def keys(client, bucket: str, prefix: str = "") -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return sorted(o["Key"] for page in pages for o in page.get("Contents", []))


def empty_and_delete(client, bucket: str) -> None:
    for key in keys(client, bucket):
        client.delete_object(Bucket=bucket, Key=key)
    client.delete_bucket(Bucket=bucket)


def upload_tree(client, bucket: str, folder, prefix: str) -> None:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.upload_file(str(path), bucket, f"{prefix}/{path.relative_to(folder).as_posix()}")


def clear_caches() -> None:
    """s3fs caches filesystem instances (and listings) per process: each test starts fresh."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
