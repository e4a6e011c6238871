"""Local paths and object-store URIs (``s3://``, ``gs://``) behind one pyarrow filesystem interface.

Every reader and writer in :mod:`hierclr.data` goes through here, so a dataset on a shared disk and
one in a bucket are read by the same code. pyarrow filesystems pickle, so Ray tasks get them as-is.
"""
from __future__ import annotations

import os
import posixpath
import re
from dataclasses import dataclass

import pyarrow.fs as pafs

from hierclr.io.atomic import write_atomic
from hierclr.io.errors import DataFormatError


@dataclass(frozen=True)
class Location:
    """A filesystem and a path inside it (``uri`` keeps the user's spelling for messages)."""

    filesystem: pafs.FileSystem
    path: str
    uri: str

    def join(self, *parts: str) -> Location:
        sep = "/" if self.uri.find("://") > 0 else os.sep
        return Location(self.filesystem, posixpath.join(self.path, *parts), sep.join([self.uri.rstrip("/\\"), *parts]))

    def exists(self) -> bool:
        return self.filesystem.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_dir(self) -> bool:
        return self.filesystem.get_file_info(self.path).type == pafs.FileType.Directory

    def is_file(self) -> bool:
        return self.filesystem.get_file_info(self.path).type == pafs.FileType.File

    def read_bytes(self) -> bytes:
        try:
            with self.filesystem.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError as e:
            raise DataFormatError(f"file not found: {self.uri}") from e

    def read_text(self) -> str:
        return self.read_bytes().decode("utf-8")

    def write_bytes_atomic(self, data: bytes) -> None:
        """Write to a temporary sibling, then rename: a reader never sees a half-written file.
        (Object stores have no rename; there a single PUT is atomic already.)"""
        parent = posixpath.dirname(self.path)
        if parent:
            self.filesystem.create_dir(parent, recursive=True)
        if isinstance(self.filesystem, pafs.LocalFileSystem):
            write_atomic(self.path, data)
        else:
            with self.filesystem.open_output_stream(self.path) as f:
                f.write(data)

    def remove_tree(self) -> None:
        """Delete this directory and everything in it; nothing when it does not exist."""
        if self.is_dir():
            self.filesystem.delete_dir(self.path)

    def list_files(self, recursive: bool = True) -> list[pafs.FileInfo]:
        """Regular files below this directory, sorted by path (a stable order for stable ids)."""
        infos = self.filesystem.get_file_info(pafs.FileSelector(self.path, recursive=recursive))
        return sorted((i for i in infos if i.type == pafs.FileType.File), key=lambda i: i.path)

    def relative(self, path: str) -> str:
        return posixpath.relpath(path, self.path)


def resolve(uri: str | os.PathLike) -> Location:
    """``/data/x``, ``./x``, ``file:///x``, ``s3://bucket/x`` or ``gs://bucket/x`` -> :class:`Location`.

    Object-store options ride in the query string as pyarrow reads them, e.g.
    ``s3://bucket/imagenet?region=us-west-2`` or ``?endpoint_override=minio:9000&scheme=http``.
    """
    text = os.fspath(uri)
    if "://" in text and not text.startswith("file://"):
        try:
            fs, path = pafs.FileSystem.from_uri(text)
        except (ValueError, OSError) as e:  # pyarrow.ArrowInvalid is a ValueError
            raise DataFormatError(f"cannot open {text}: {e}") from e
        return Location(fs, path.rstrip("/"), text.split("?", 1)[0])  # query (?region=...) configures fs only
    text = text.removeprefix("file://")
    path = os.path.abspath(os.path.expanduser(text))
    return Location(pafs.LocalFileSystem(), path.replace(os.sep, "/"), text)


_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:")


def absolute(uri: str | os.PathLike) -> str:
    """A local path (``x``, ``./x``, ``~/x``) made absolute against this process's working directory; anything that
    starts with a scheme (``s3://``, ``gs://``, ``file://``, ``builtin://``, ``mlflow:``, ``runs:/``, ``models:/``)
    unchanged. Paths sent to Ray workers must be absolute: a worker runs in another directory."""
    text = os.fspath(uri)
    if _SCHEME.match(text):
        return text
    return os.path.abspath(os.path.expanduser(text))
