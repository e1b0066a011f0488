"""Where shipped things live, the ``builtin:NAME`` names that point at them, and where stores live (a
path or an fsspec URL); no heavy imports (fsspec is imported when a location is made)."""

from __future__ import annotations

import dataclasses
import os
from importlib import resources
from pathlib import Path
from typing import Any

from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import BUILTIN_PREFIX


def package_data() -> Path:
    """``jaxdiag/data``: shipped models (one folder each) and their circuit files."""
    return Path(str(resources.files("jaxdiag"))) / "data"


def presets_dir() -> Path:
    return Path(str(resources.files("jaxdiag"))) / "presets"


def user_path(value: str) -> Path:
    """``value`` as a path, ``~`` and ``~user`` expanded; a one-line error for a user with no home."""
    try:
        return Path(value).expanduser()
    except RuntimeError:  # Path.expanduser's "Could not determine home directory"
        raise JaxdiagError(f"path {value!r}: cannot expand {value.split('/')[0]!r} (no such user's home directory)") from None


def resolve_path(value: str, base: Path) -> Path:
    """``builtin:REL`` -> the package's data/REL; a relative path -> relative to ``base``."""
    if value.startswith(BUILTIN_PREFIX):
        return package_data() / value[len(BUILTIN_PREFIX):]
    path = user_path(value)
    return path if path.is_absolute() else base / path


def builtin_models() -> list[str]:
    """``builtin:NAME`` for every shipped model."""
    data = package_data()
    names = sorted(p.name for p in data.iterdir() if (p / "config.json").is_file()) if data.is_dir() else []
    return [BUILTIN_PREFIX + name for name in names]


def builtin_model_dir(name: str) -> Path:
    """The directory of the shipped model ``builtin:NAME``; a one-line error naming the choices if none."""
    path = resolve_path(name, Path.cwd())
    if not (path / "config.json").is_file():
        raise JaxdiagError(f"no built-in model {name!r} (available: {', '.join(builtin_models()) or 'none'})")
    return path


# What a checkpoint directory holds, preferred first: one safetensors file, the index of a sharded one
# (save_pretrained(max_shard_size=...)), or a PyTorch pickle.
SHARD_INDEX = "model.safetensors.index.json"
WEIGHT_FILES = ("model.safetensors", SHARD_INDEX, "pytorch_model.bin")


def weights_file(directory: Path) -> Path | None:
    """The weights file of a checkpoint directory (None if it has none)."""
    return next((directory / f for f in WEIGHT_FILES if (directory / f).is_file()), None)


def local_model_dir(model: str) -> Path | None:
    """The directory a ``--model`` names when it is a local one (a path or ``builtin:NAME``); None otherwise
    (a hub id or ``wheel:NAME``, found only by importing more)."""
    if model.startswith("wheel:"):
        return None
    path = builtin_model_dir(model) if model.startswith(BUILTIN_PREFIX) else user_path(model)
    return path if path.is_dir() else None


def is_url(value: str) -> bool:
    """Whether ``value`` names a store by fsspec URL: zarr's own rule, so jaxdiag and zarr agree on it."""
    return "://" in value or ("::" in value and "local://" not in value)


@dataclasses.dataclass(frozen=True)
class StoreLocation:
    """Where a store lives: a local path or an fsspec URL (``file://``, ``memory://``, ``s3://``, ...).

    Every file operation on a store (existence, done markers, removal) goes through ``fs``, fsspec's
    filesystem for it (``LocalFileSystem`` for a path), at ``root``; zarr and xarray get
    :meth:`zarr_store`. Only creation differs: a path is made in a temporary folder and renamed,
    which object stores cannot do (see ``jaxdiag.sweep.store.create_store``).
    """

    text: str  # as messages show it: the path as pathlib prints it, or the URL as given
    fs: Any  # fsspec.AbstractFileSystem
    root: str  # the store's path on fs, no trailing slash
    is_url: bool

    @classmethod
    def of(cls, value: str | os.PathLike | StoreLocation, *,
           error: type[Exception] = JaxdiagError) -> StoreLocation:
        """``value`` as a location; ``error`` (one line) for a URL of an unknown protocol or whose
        fsspec backend is not installed, before anything is read or written."""
        if isinstance(value, StoreLocation):
            return value
        text = os.fspath(value)
        if not is_url(text):
            from fsspec.implementations.local import LocalFileSystem

            path = Path(text)
            return cls(str(path), LocalFileSystem(), str(path.absolute()), False)
        from fsspec.core import url_to_fs

        try:
            fs, root = url_to_fs(text)
        except (ValueError, ImportError) as exc:  # "Protocol not known: x", "Install s3fs to access S3"
            raise error(f"cannot use the store URL {text!r}: {exc}") from None
        return cls(text, fs, root.rstrip("/") or "/", True)

    def __str__(self) -> str:
        return self.text

    @property
    def local_path(self) -> Path | None:
        """The store's folder when it was named by a path (None for a URL, ``file://`` included)."""
        return None if self.is_url else Path(self.text)

    def child(self, *parts: str) -> str:
        return "/".join([self.root.rstrip("/"), *parts])

    def exists(self) -> bool:
        """Anything at all is there (a folder, a file, or for object stores any key under the prefix)."""
        self.fs.invalidate_cache(self.root)  # another process (host) may have written it since we last listed
        return bool(self.fs.exists(self.root))

    def is_store(self) -> bool:
        self.fs.invalidate_cache(self.root)
        return bool(self.fs.isfile(self.child("zarr.json")))

    def remove(self, *parts: str) -> None:
        """Remove the store (or the part of it named by ``parts``) and everything under it; nothing there is fine."""
        try:
            self.fs.rm(self.child(*parts), recursive=True)
        except FileNotFoundError:
            pass

    def zarr_store(self, *, read_only: bool = False) -> Any:
        """What zarr and xarray open: a path goes to zarr's LocalStore (as before URLs were supported),
        a URL to an ``FsspecStore`` (for ``file://`` with folders made on demand, as zarr expects)."""
        if not self.is_url:
            return self.text
        from fsspec.implementations.local import LocalFileSystem
        from zarr.storage import FsspecStore

        options = {"auto_mkdir": True} if isinstance(self.fs, LocalFileSystem) else None
        return FsspecStore.from_url(self.text, storage_options=options, read_only=read_only)


def check_output_dir(value: str, *, what: str = "--out", error: type[Exception] = JaxdiagError) -> None:
    """Refuse, before any work, an output folder that cannot be made or written: one that is a file, or whose
    nearest existing folder is not writable (reports and verify results are written after minutes of work)."""
    path = Path(value).expanduser()
    if path.exists() and not path.is_dir():
        raise error(f"{what} {value}: exists and is not a folder")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise error(f"{what} {value}: cannot write into {existing} (permission denied)")
