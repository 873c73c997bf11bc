"""Where the batch job writes its shards and manifest: a local folder, or an fsspec URL when the output names a
scheme (`s3://bucket/job`, `gs://...`, `file:///shared/job`, `memory://job` in tests). fsspec is imported only
for a URL (pip install fsspec, the SDK's extra './sdk[fsspec]', plus the file system's own package, e.g.
s3fs); a local folder needs nothing more than the SDK.

Both write a file in full before it appears under its name, so a reader (or a resumed job) never sees half a
shard: locally a temporary name, then os.replace; over fsspec the bytes are made in a local temporary file first
(zipfile writes the same bytes only to a seekable file, which an object store's upload is not), uploaded under a
temporary name and moved (on an object store a move is a server-side copy: the object appears whole or not at
all). The sha256 recorded for a shard is of the bytes written; a resumed job checks it against the stored file.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+://")  # two letters at least: C:\ is a path, not a URL


def is_url(out: str) -> bool:
    return bool(_SCHEME.match(str(out)))


def _sha256(read) -> str:
    h = hashlib.sha256()
    for block in iter(lambda: read(1 << 20), b""):
        h.update(block)
    return h.hexdigest()


class LocalFolder:
    """A folder on this machine (or a shared mount every Ray node has at the same path)."""

    shared = True  # (Ray workers can write here if the path is mounted on their node)

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    def for_workers(self) -> str:
        """The output as workers on other processes and nodes name it."""
        return str(self.path.resolve())

    def mkdir(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)

    def read_text(self, name: str) -> str | None:
        try:
            return (self.path / name).read_text()
        except FileNotFoundError:
            return None

    def write_text(self, name: str, text: str) -> None:
        tmp = self.path / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, self.path / name)

    def write_file(self, name: str, write: Callable[[Path], None]) -> str:
        """`write(path)` makes the file; it appears as `name` once whole. Its sha256."""
        tmp = self.path / f".{name}.tmp"
        write(tmp)
        os.replace(tmp, self.path / name)
        return self.sha256(name)

    def sha256(self, name: str) -> str | None:
        """The stored file's sha256, None if there is none."""
        if not (self.path / name).is_file():
            return None
        with open(self.path / name, "rb") as f:
            return _sha256(f.read)


class FsspecFolder:
    """A folder behind an fsspec URL."""

    def __init__(self, url: str):
        try:  # optional: only an output URL needs fsspec
            import fsspec
        except ImportError:
            raise ValueError(f"--out {url}: an output URL needs fsspec (pip install fsspec, the SDK's extra "
                             "'./sdk[fsspec]', and the file system's package, e.g. s3fs for s3://)") from None
        self.url = url
        try:  # the file system's own package (s3fs, gcsfs, ...) is another optional install
            self.fs, self.root = fsspec.core.url_to_fs(url)
        except ImportError as e:  # fsspec's message names the package: "Install s3fs to access S3"
            raise ValueError(f"--out {url}: {e} (pip install it beside fsspec)") from None
        protocols = {self.fs.protocol} if isinstance(self.fs.protocol, str) else set(self.fs.protocol)
        self.shared = "memory" not in protocols  # memory:// lives in this process alone

    def __str__(self) -> str:
        return self.url

    def for_workers(self) -> str:
        return self.url

    def _path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def mkdir(self) -> None:
        self.fs.makedirs(self.root, exist_ok=True)

    def read_text(self, name: str) -> str | None:
        try:
            return self.fs.cat_file(self._path(name)).decode()
        except FileNotFoundError:
            return None

    def _publish(self, local: Path, name: str) -> None:
        tmp = self._path(f".{name}.tmp")
        self.fs.put_file(str(local), tmp)
        self.fs.mv(tmp, self._path(name))

    def write_text(self, name: str, text: str) -> None:
        self.write_file(name, lambda path: path.write_text(text))

    def write_file(self, name: str, write: Callable[[Path], None]) -> str:
        with tempfile.TemporaryDirectory(prefix="ganserve-") as folder:
            local = Path(folder) / name
            write(local)
            with open(local, "rb") as f:
                digest = _sha256(f.read)
            self._publish(local, name)
        return digest

    def sha256(self, name: str) -> str | None:
        try:
            with self.fs.open(self._path(name), "rb") as f:
                return _sha256(f.read)
        except FileNotFoundError:
            return None


def output(out) -> LocalFolder | FsspecFolder:
    """The folder `out` names (a path, a URL, or a folder already)."""
    if isinstance(out, (LocalFolder, FsspecFolder)):
        return out
    return FsspecFolder(str(out)) if is_url(str(out)) else LocalFolder(out)
