"""JAX's persistent compilation cache for jaxdiag's commands: a second run of a sweep shape skips compiling.

XLA keys each cached executable by the program, the jax/jaxlib version, the backend and its flags, so
a cached program is the one that would have been compiled: results stay bit-identical. The cache
lives in ``$JAXDIAG_CACHE_DIR`` if set, else ``$XDG_CACHE_HOME/jaxdiag/xla`` (``~/.cache/jaxdiag/xla``);
``jaxdiag run --compile-cache DIR`` overrides it and ``--no-compile-cache`` turns it off.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CACHE_ENV = "JAXDIAG_CACHE_DIR"
# JAX's own default: programs that compile faster than this are not worth a disk read.
MIN_COMPILE_SECONDS = 1.0


def default_cache_dir() -> Path:
    """Where the cache lives unless told otherwise (see the module docstring)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "jaxdiag" / "xla"


def enable_compile_cache(directory: str | Path | None = None, *,
                         min_compile_seconds: float = MIN_COMPILE_SECONDS) -> Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (default: :func:`default_cache_dir`).

    A cache that cannot be created (read-only home, full disk) only costs speed: a one-line warning,
    and the run goes on compiling as usual. Returns the directory in use, or None.
    """
    import jax

    path = Path(directory).expanduser() if directory is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        print(f"jaxdiag: warning: no compilation cache ({path}: {exc.strerror or exc})", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float(min_compile_seconds))
    return path
