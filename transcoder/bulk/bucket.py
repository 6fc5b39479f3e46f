"""``transcode bulk`` when SRC_DIR or DST_DIR (or both) is a bucket: an fsspec URL such as
``s3://bucket/prefix`` or ``memory://x`` (``file://`` URLs are local folders).

- A bucket SRC_DIR is listed once (:func:`transcoder.remote.listing`) and planned as a local
  tree is (:mod:`.tree`: checkpoint suffixes, ``--pattern``, an index with its shards, a
  Hugging Face model folder as one source, outputs that would collide); an index is read from
  a private local copy, with the readers' bound.
- Each worker downloads its source's files into a private folder (the readers then apply
  every bound they apply to local files), converts locally and, for a bucket DST_DIR,
  publishes the output through a temporary key (:mod:`.bucket_task`).
- The manifest of a bucket DST_DIR is journaled locally and rewritten as an object
  (:mod:`.bucket_manifest`).
- Fingerprints: an object's size, modification time and ETag, as the store lists them; with
  ``--checksums`` also the SHA-256 of its bytes (of the downloaded copy a worker converted,
  of the local output before it was uploaded), and a later run whose size matches but
  whose time or ETag differ streams the object to hash it: the hash decides, as for files.
- Temporary keys a killed run left beside the planned outputs are removed at the start.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from ..errors import TranscoderError, UsageError
from ..formats import hf_folder, shards as sharding
from ..remote import (fetch, filesystem, is_url, join, listing, local, object_fingerprint,
                      remove_temps, sha256_object)
from . import tree as trees
from .bucket_manifest import BucketManifest, journal_folder
from .manifest import NAME, Manifest, output_unchanged, source_unchanged
from .task import Fingerprint


@dataclass
class BucketPlaces:
    """SRC_DIR and DST_DIR, one of them (at least) a bucket; what the run needs of them."""
    src: str                                   # a URL, or a resolved local folder
    dst: str
    found: dict[str, dict] = field(default_factory=dict)    # a bucket SRC_DIR's objects
    outputs: dict[str, dict] = field(default_factory=dict)  # a bucket DST_DIR's objects

    @property
    def local_dst(self) -> Path | None:
        """DST_DIR when it is a local folder (its outputs are flushed by the run)."""
        return None if is_url(self.dst) else Path(self.dst)

    def scan(self, to: str, pattern: str | None) -> trees.Tree:
        if not is_url(self.src):
            skip = self.local_dst or journal_folder(self.dst)
            return trees.scan(Path(self.src), skip, to, pattern)
        tree = scan_bucket(self.src, self.found, to, pattern, _inside(self.dst, self.src))
        _skip_outputs_inside(tree, _inside(self.src, self.dst))
        return tree

    def manifest(self) -> Manifest:
        return Manifest(Path(self.dst)) if self.local_dst else BucketManifest(self.dst)

    def remove_stale_temps(self, outputs: list[str]) -> None:
        """A bucket DST_DIR's temporary keys of a killed run (a local one: the runner's)."""
        self.outputs = listing(self.dst, missing_ok=True)
        remove_temps(self.dst, set(outputs) | {NAME}, self.outputs)

    def trusted(self, entry: dict, source: trees.Source) -> bool:
        """``entry``'s source and output are still what it recorded (``done_with`` checked)."""
        if is_url(self.src):
            infos = [self.found.get(f) for f in source.files]
            same = None not in infos and _same_objects(
                [join(self.src, f) for f in source.files], infos, entry, "")
        else:
            same = source_unchanged(entry, Path(self.src), source.files)
        if not same:
            return False
        if not is_url(self.dst):
            return output_unchanged(entry, Path(self.dst))
        found = self.outputs.get(entry["output"])
        return found is not None and _same_objects([join(self.dst, entry["output"])], [found],
                                                   entry, "output_")


def places(src: str, dst: str) -> BucketPlaces:
    """Check the two roots (a bucket one is looked at when first listed, not here)."""
    src, dst = str(src), str(dst)
    for url in (src, dst):
        if is_url(url):
            filesystem(url)   # MissingDependencyError naming the package, before any work
    found = listing(src) if is_url(src) else {}   # a missing prefix: refused, nothing made
    if not is_url(src):
        folder = Path(local(src))
        if not folder.is_dir():
            raise UsageError("not a folder", path=folder)
        src = str(folder.resolve())
    if not is_url(dst):
        folder = Path(local(dst)).resolve()
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise UsageError(f"cannot create DST_DIR: {exc.strerror or exc}", path=folder) \
                from None
        dst = str(folder)
    if _key(src) == _key(dst):
        raise UsageError("DST_DIR must differ from SRC_DIR (outputs would be read as sources "
                         "on the next run)", path=dst)
    return BucketPlaces(src.rstrip("/"), dst.rstrip("/"), found)


def scan_bucket(src: str, found: dict[str, dict], to: str, pattern: str | None,
                skip: str | None = None) -> trees.Tree:
    """The plan of a bucket SRC_DIR from its listing, as :func:`.tree.scan` plans a folder
    (objects under ``skip``, a DST_DIR inside SRC_DIR, are not looked at): a Hugging Face
    model folder (``config.json`` beside its weights) is one source, as in a local tree."""
    tree, candidates, suffix = trees.Tree(), [], trees.TARGETS[to]
    keys = [rel for rel in sorted(found) if skip is None or not rel.startswith(skip + "/")]
    for rel in [k for k in keys if _unsafe(k)]:
        tree.skipped.append(trees.Skipped(rel, "", "a key with an empty, '.' or '..' part "
                                                   "(it could lead out of DST_DIR): not read"))
    keys = [k for k in keys if not _unsafe(k)]
    folders = _model_folders(keys)
    for rel in keys:
        parent, name = _parent(rel), PurePosixPath(rel).name
        if parent in folders:
            continue   # planned with its folder, below
        if (pattern and not trees._matches(rel, pattern)) or trees.checkpoint_suffix(name) is None:
            tree.ignored.append(rel)
        else:
            candidates.append(rel)
    indexes = {rel: _shards(src, rel, found) for rel in candidates if sharding.is_index(rel)}
    shards = {s for listed in indexes.values() for s in listed}
    for rel in candidates:
        if rel not in shards:
            files = (rel, *sorted(indexes.get(rel, ())))
            output = rel[: len(rel) - len(trees.checkpoint_suffix(rel))] + suffix
            tree.sources.append(trees.Source(rel, output, files, _size(files, found)))
    for parent, weights in sorted(folders.items()):
        _plan_folder(tree, src, found, keys, parent, weights, pattern, suffix)
    tree.sources = trees._refuse_collisions(tree.sources)
    return tree


def _parent(rel: str) -> str:
    return PurePosixPath(rel).parent.as_posix()


def _model_folders(keys: list[str]) -> dict[str, str]:
    """Prefix -> weights file name of each model folder among the keys (``.``: SRC_DIR)."""
    names: dict[str, list[str]] = {}
    for rel in keys:
        names.setdefault(_parent(rel), []).append(PurePosixPath(rel).name)
    return {parent: weights for parent, listed in names.items()
            if (weights := trees.model_weights(listed)) is not None}


def _plan_folder(tree: trees.Tree, src: str, found: dict[str, dict], keys: list[str],
                 parent: str, weights: str, pattern: str | None, suffix: str) -> None:
    """The model folder ``parent`` as one source named after it (config.json, the weights,
    their shards), unless ``--pattern`` matches neither its path nor its weights' name; its
    other objects ignored."""
    inside = PurePosixPath(parent)
    taken: tuple[str, ...] = ()
    if not pattern or trees._matches(parent, pattern) or trees._matches(weights, pattern):
        index = (inside / weights).as_posix()
        listed = sorted(_shards(src, index, found)) if sharding.is_index(weights) else []
        taken = ((inside / hf_folder.CONFIG).as_posix(), index, *listed)
        name = parent if parent != "." else PurePosixPath(src.rstrip("/")).name
        tree.sources.append(trees.Source(parent, name + suffix, taken, _size(taken, found)))
    tree.ignored.extend(rel for rel in keys if _parent(rel) == parent and rel not in taken)


def _size(files, found: dict[str, dict]) -> int:
    return sum(int(found.get(f, {}).get("size") or 0) for f in files)


def _unsafe(rel: str) -> bool:
    """Object keys are names, not paths: ``a/../../x.pt`` or ``a//x.pt`` would not mirror
    into DST_DIR as a path inside it."""
    parts = rel.split("/")
    return any(p in ("", ".", "..") for p in parts) or "\\" in rel or "\0" in rel


def _shards(src: str, index: str, found: dict[str, dict]) -> set[str]:
    """The shards an index object lists (empty if it cannot be read: the conversion says why)."""
    import shutil
    import tempfile

    if int(found[index].get("size") or 0) > sharding.MAX_INDEX:
        return set()
    folder = Path(tempfile.mkdtemp(prefix="transcoder-index-"))
    try:
        copy = folder / PurePosixPath(index).name
        fetch(join(src, index), copy)
        names = set(sharding.weight_map(copy).values())
    except TranscoderError:
        return set()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    parent = PurePosixPath(index).parent
    return {(parent / n).as_posix() for n in names}


def combined(infos: list[dict]) -> Fingerprint:
    """One fingerprint for a source's objects (an index and its shards)."""
    prints = [object_fingerprint(i) for i in infos]
    times = [p[1] for p in prints]
    etags = [p[2] for p in prints]
    return Fingerprint(sum(p[0] for p in prints), None if None in times else max(times),
                       etag=None if None in etags else "+".join(etags))


def sha256_objects(urls: list[str]) -> str:
    """As :func:`.task.sha256_files` computes it for the same bytes, streamed from the store."""
    if len(urls) == 1:
        return sha256_object(urls[0])
    lines = "".join(f"{sha256_object(u)}  {PurePosixPath(u).name}\n" for u in urls)
    return hashlib.sha256(lines.encode()).hexdigest()


def _same_objects(urls: list[str], infos: list[dict], entry: dict, prefix: str) -> bool:
    now = combined(infos)
    if now.size != entry.get(f"{prefix}size"):
        return False
    if (now.mtime_ns, now.etag) == (entry.get(f"{prefix}mtime_ns"), entry.get(f"{prefix}etag")):
        return True
    digest = entry.get(f"{prefix}sha256")
    try:
        return digest is not None and sha256_objects(urls) == digest
    except TranscoderError:
        return False


def _skip_outputs_inside(tree: trees.Tree, src_in_dst: str | None) -> None:
    """SRC_DIR inside DST_DIR: a source whose output would land inside SRC_DIR is skipped
    (as :mod:`.tree` does for folders)."""
    if src_in_dst is None:
        return
    keep = []
    for source in tree.sources:
        if source.output.startswith(src_in_dst + "/"):
            tree.skipped.append(trees.Skipped(
                source.path, source.output, f"its output {source.output} would land inside "
                f"SRC_DIR (DST_DIR holds SRC_DIR): not converted"))
        else:
            keep.append(source)
    tree.sources = keep


def _key(root: str) -> str:
    """A root as one comparable string (protocol and path)."""
    if not is_url(root):
        return "file://" + root
    fs, path = filesystem(root)
    protocol = fs.protocol if isinstance(fs.protocol, str) else fs.protocol[0]
    return f"{protocol}://{path.rstrip('/')}"


def _inside(dst: str, src: str) -> str | None:
    """DST_DIR's path relative to SRC_DIR when it is inside it (its objects are not sources)."""
    inner, outer = _key(dst), _key(src)
    return inner[len(outer) + 1:] if inner.startswith(outer + "/") else None
