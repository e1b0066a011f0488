"""Run a script in a fresh interpreter where JAX, Flax, optax and jaxdiag's compute layers cannot be imported.

``analysis`` must work on a machine without JAX. The modules of jaxdiag it may still read (names, store
locations, errors, the circuit-file format, store completeness...) are the JAX-free base layers of the
import-linter layers contract in pyproject.toml, so the list lives in one place: the static contract and this
runtime check read the same layers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

BLOCKED = ("jax", "jaxlib", "flax", "optax", "jaxdiag")
BASE_LAYERS = 3  # the last three layers of the contract: the JAX-free base, schema, errors


def jax_free_modules() -> tuple[str, ...]:
    """jaxdiag's JAX-free base modules, read from the layers contract (``"a | b"`` is one layer of two)."""
    config = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    layers = next(c for c in config["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    return ("jaxdiag",) + tuple(m.strip() for layer in layers[-BASE_LAYERS:] for m in layer.split("|"))


def run_without_jax(script: str) -> None:
    """Run script (Python, dedented) with every import of JAX, Flax, optax or jaxdiag beyond
    :func:`jax_free_modules` failing; it must end by printing "ok" and leave none of them imported."""
    code = textwrap.dedent(f"""
        import sys
        BLOCKED = {BLOCKED!r}
        ALLOWED = {jax_free_modules()!r}

        class Block:  # any import of these raises ImportError (sys.modules[name] = None would trip scipy)
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED and name not in ALLOWED:
                    raise ImportError(f"blocked {{name}}")

        sys.meta_path.insert(0, Block())
    """) + textwrap.dedent(script) + textwrap.dedent("""
        assert not [m for m in sys.modules if m.split(".")[0] in BLOCKED and m not in ALLOWED]
        print("ok")
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-2000:]
