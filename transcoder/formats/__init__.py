"""The format registry: which reader and writer handle which file, and what a file is.

Each format module declares its :class:`~.base.Format` record (name, suffixes, layout, flags,
``sniff``, ``reader``, ``writer``): :mod:`.pt`, :mod:`.safetensors_format`, :mod:`.keras_h5`,
:mod:`.keras_zip`, and the deployment artifacts of :mod:`.exported`. A file to write takes the
format its name implies (longest matching suffix, so ``.weights.h5`` wins over ``.h5``). A
file to read is identified once (:func:`identify`): what its content is, each format's
``sniff`` asked in turn on one look at the file (built-ins first, then plugins), whatever its
name: a safetensors file named ``.pt`` or a TorchScript archive named ``.jit`` is read for what
it is, with a one-line note when the name says otherwise; ``--from`` overrides. The content is
checked against the format's magic bytes before any parsing, from that same look.

Third-party packages add formats through the ``transcoder.formats`` entry-point group: each
entry point is a zero-argument callable returning a :class:`Format`. Plugins are looked up only
when no built-in format takes a name or a content (looking them up costs start-up time), so a
built-in always wins. The format modules are imported on first use of the registry.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from ..checkpoint import LAYOUT_KERAS, LAYOUT_TORCH, Checkpoint
from ..errors import TranscoderError, UsageError
from .base import NEEDS_ARCH, NEEDS_ARCH_EXPORT, Format, Head, ReadOptions, Reader, Writer  # noqa: F401

ENTRY_POINT_GROUP = "transcoder.formats"

#: The order contents are asked in: a ``.keras`` zip before a torch zip (both are zips);
#: safetensors before the pickle, whose opcode a header length such as 0x380 looks like.
SNIFF_ORDER = ("savedmodel", "hf_folder", "keras_h5", "keras_zip", "tflite", "safetensors", "pt")


@lru_cache(maxsize=None)
def builtin_formats() -> tuple[Format, ...]:
    """The built-in formats, in the order users see them listed."""
    from . import exported, hf_folder, keras_h5, keras_zip, pt, safetensors_format

    return (pt.FORMAT, safetensors_format.FORMAT, keras_h5.WEIGHTS_FORMAT, keras_h5.FORMAT,
            keras_zip.FORMAT, hf_folder.FORMAT, exported.SAVEDMODEL, exported.TFLITE)


def plugin_formats() -> list[Format]:
    from importlib.metadata import entry_points

    return [ep.load()() for ep in entry_points(group=ENTRY_POINT_GROUP)]


def all_formats() -> list[Format]:
    """Built-in formats followed by plugins from the entry-point group."""
    return list(builtin_formats()) + plugin_formats()


def for_path(path: Path | str) -> Format:
    """The format a file name implies; UsageError naming the supported suffixes otherwise."""
    name = Path(path).name.lower()
    fmt = _longest_match(name, builtin_formats()) or _longest_match(name, all_formats())
    if fmt is None:
        known = ", ".join(s for f in all_formats() for s in f.suffixes)
        raise UsageError(f"unknown file type (supported: {known})", path=path)
    return fmt


def by_name(name: str) -> Format:
    """A format by its name (``--from``); UsageError naming the choices otherwise."""
    found = next((f for f in builtin_formats() if f.name == name), None)
    found = found or next((f for f in all_formats() if f.name == name), None)
    if found is None:
        raise UsageError(f"unknown format {name!r} (one of: "
                         f"{', '.join(f.name for f in all_formats())})")
    return found


@dataclass(frozen=True)
class Identified:
    """What a path is, found once: the format to read it with, a note when its name says
    otherwise, and the look at the file that found it (the reader checks the magic on it)."""

    path: Path
    format: Format
    note: str | None = None
    head: Head | None = None

    @property
    def layout(self) -> str:
        return self.format.layout

    def read(self, options: ReadOptions | None = None) -> Checkpoint:
        return self.format.read(self.path, options, head=self.head)


def identify(path: Path | str, name: str | None = None) -> Identified:
    """The format to read ``path`` with: ``name`` (``--from``) if given, else what its content
    is, else what its name says; and a note when the content and the name disagree. A path that
    does not exist yet (a file to write) is what its name says."""
    path = Path(path)
    head = Head.of(path)
    if name is not None:
        return Identified(path, by_name(name), None, head)
    found = by_content(head)
    named = _longest_match(path.name.lower(), builtin_formats())
    if found is None:
        return Identified(path, for_path(path), None, head)
    if named is None and found.folder:
        return Identified(path, found, None, head)   # a folder's name says nothing
    if named is found or (named is not None and named.reader is not None
                          and named.reader is found.reader):
        return Identified(path, named, None, head)   # e.g. .weights.h5 and .h5: one reader
    said = f"its name says {named.description}" if named else "its name says nothing known"
    return Identified(path, found, f"{path}: read as {found.description}, by its content ({said})",
                      head)


def by_content(head: Head, in_index: bool = False) -> Format | None:
    """The format whose ``sniff`` takes the content (built-ins in :data:`SNIFF_ORDER`, then
    plugins); an index (``*.index.json``) is the format of the first shard it names. Built-in
    sniffs are asked about any path (a folder, one that does not exist); plugins only about a
    readable, non-empty file."""
    builtins = {f.name: f for f in builtin_formats()}
    for fmt in (builtins[n] for n in SNIFF_ORDER):
        if fmt.sniff(head, head.path):
            return fmt
    if not in_index and head.data.lstrip()[:1] == b"{":
        from . import shards

        if shards.is_index(head.path):
            return _index_kind(head.path)
    if head.problem is not None:
        return None   # the reader says why
    return next((f for f in plugin_formats() if f.sniff(head, head.path)), None)


def _index_kind(path: Path) -> Format | None:
    from . import shards

    try:
        first = shards.shard_paths(path)[:1]
    except TranscoderError:
        return None   # the reader says why
    kind = by_content(Head.of(first[0]), in_index=True) if first else None
    return kind if kind is not None and kind.name in shards.SHARDED_FORMATS else None


def other_layout(layout: str) -> str:
    return LAYOUT_KERAS if layout == LAYOUT_TORCH else LAYOUT_TORCH


def _longest_match(name: str, formats) -> Format | None:
    matches = [(len(s), f) for f in formats for s in f.suffixes if name.endswith(s)]
    return max(matches, key=lambda m: m[0])[1] if matches else None


# ---------------------------------------------------------------- kept for existing callers

def for_source(path: Path | str, name: str | None = None) -> tuple[Format, str | None]:
    """``identify`` as a pair (format, note)."""
    found = identify(path, name)
    return found.format, found.note


def layout_of(path: Path | str) -> str:
    """The layout (``"torch"`` or ``"keras"``) of a file: by its content when it exists, else
    by the format its name implies."""
    return identify(path).layout
