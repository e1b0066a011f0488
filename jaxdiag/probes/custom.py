"""User probes: one pure function of an :class:`AttentionView`, with its name and attrs.

    @jaxdiag.probe(long_name="pi at the first token after BOS", units="1")
    def first_attn(view):
        return view.probs[..., 1]          # [batch, head, row]

The same object serves ``jaxdiag.diagnose(model, prompts, probes=[first_attn])`` and a sweep
(``probes = ["mymodule:first_attn"]`` in a run config), which stores ``first_attn`` beside the
built-in diagnostics with the same dims and these attrs. The function runs inside the compiled
step, once per layer, on the probed query rows; it must be pure (jax.numpy only, no side effects).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

import jax
import jax.numpy as jnp

from jaxdiag.errors import JaxdiagError
from jaxdiag.probes import AttentionView, Probe
from jaxdiag.schema import RESERVED_KEYS

ProbeFunction = Callable[[AttentionView], jax.Array]


def probe(name: str | None = None, *, long_name: str = "", units: str = "1") -> Callable[[ProbeFunction], Probe]:
    """A decorator making ``function(view) -> [batch, head, row]`` a :class:`Probe` named ``name``
    (default: the function's name) that gives one per-head variable of that name."""
    def make(function: ProbeFunction) -> Probe:
        return probe_of(function, name or function.__name__, long_name=long_name, units=units)

    return make


def probe_of(function: ProbeFunction, name: str, *, long_name: str = "", units: str = "1") -> Probe:
    """The :class:`Probe` of one per-head function (what :func:`probe` makes)."""
    if not name.isidentifier():
        raise JaxdiagError(f"probe name {name!r} is not an identifier: it becomes a store variable's name")
    if name in RESERVED_KEYS:
        raise JaxdiagError(f"probe name {name!r} is taken: the store already has a variable or coordinate of that name")

    def read(view: AttentionView) -> dict[str, jax.Array]:
        value = jnp.asarray(function(view))
        check_shape(name, view, value.shape)
        return {name: value.astype(jnp.float32)}

    return Probe(name, read, attrs={name: (long_name or name, units)})


def check_shape(name: str, view: AttentionView, shape: tuple[int, ...]) -> None:
    """A per-head probe gives ``[batch, head, row]``, the probed rows' shape (checked while tracing)."""
    batch, rows = view.rows.shape
    heads = (view.scores if view.scores is not None else view.head_out).shape[1 if view.scores is not None else 2]
    if tuple(shape) != (batch, heads, rows):
        raise JaxdiagError(f"probe {name!r} returned shape {tuple(shape)} at layer {view.layer}; a probe returns "
                           f"[batch, head, row] = {(batch, heads, rows)}")


def resolve_probe(spec: str | Probe, where: str, search: Path | None = None) -> Probe:
    """A probe named ``module:attribute`` (importable, or a module beside ``search``); a Probe passes."""
    if isinstance(spec, Probe):
        return spec
    module_name, _, attribute = str(spec).partition(":")
    if not module_name or not attribute:
        raise JaxdiagError(f"{where}: probe {spec!r} is not of the form 'module:function'")
    try:
        module = _import(module_name, search)
    except ImportError as exc:
        raise JaxdiagError(f"{where}: cannot import the module of probe {spec!r} ({exc})") from None
    found = getattr(module, attribute, None)
    if not isinstance(found, Probe):
        what = "nothing" if found is None else f"a {type(found).__name__}"
        raise JaxdiagError(f"{where}: {spec!r} is {what}, not a probe (make one with @jaxdiag.probe)")
    return found


def _import(module_name: str, search: Path | None):
    if search is None or importlib.util.find_spec(module_name.partition(".")[0]) is not None:
        return importlib.import_module(module_name)
    sys.path.insert(0, str(search))  # a module beside the run config, as its relative paths are
    try:
        return importlib.import_module(module_name)
    finally:
        sys.path.remove(str(search))
