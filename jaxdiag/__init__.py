"""jaxdiag: per-head attention diagnostics for GPT-2-family models, at sweep scale, in JAX.

The top-level names are imported lazily so that ``jaxdiag.errors`` and the CLI's light commands
(``info``, ``report``) start without importing JAX. ``jaxdiag.effects`` is the function
(:func:`jaxdiag.api.effects`); the causal-effects package is ``jaxdiag.causal``, so no package
shadows it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_EXPORTS = {
    "load": "jaxdiag.api",
    "diagnose": "jaxdiag.api",
    "LoadedModel": "jaxdiag.api",
    "effects": "jaxdiag.api",
    "attention": "jaxdiag.api",
    "probe": "jaxdiag.probes.custom",
    "Probe": "jaxdiag.probes",
    "AttentionView": "jaxdiag.probes",
    "show": "jaxdiag.views",
    "attention_diagnostics": "jaxdiag.probes.diagnostics",
    "DIAGNOSTICS": "jaxdiag.probes.diagnostics",
    "JaxdiagError": "jaxdiag.errors",
}
__all__ = [*_EXPORTS, "__version__"]

if TYPE_CHECKING:
    from jaxdiag.api import LoadedModel, attention, diagnose, effects, load
    from jaxdiag.probes import AttentionView, Probe
    from jaxdiag.probes.custom import probe
    from jaxdiag.views import show
    from jaxdiag.probes.diagnostics import DIAGNOSTICS, attention_diagnostics
    from jaxdiag.errors import JaxdiagError


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'jaxdiag' has no attribute {name!r}")
