"""Where shipped things live, and the ``builtin:NAME`` names that point at them (no heavy imports)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

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
