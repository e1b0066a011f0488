"""Circuits for the report: a built-in circuit by name, a circuit file, or a store's causal circuit.

The file format itself (:class:`Circuit`, parsing, writing) is :mod:`jaxdiag.circuits`, shared with runs.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from analysis.errors import AnalysisError
from jaxdiag.circuits import (BUILTIN, EFFECTS_CIRCUIT, NO_CIRCUIT, Circuit, circuit_toml, from_mapping, load_ablation,
                              parse_head, read_circuit_file)
from jaxdiag.schema import BUILTIN_PREFIX

if TYPE_CHECKING:
    import xarray as xr

__all__ = ["BUILTIN", "EFFECTS_CIRCUIT", "NO_CIRCUIT", "Circuit", "circuit_toml", "effects_circuit", "from_mapping", "load_ablation",
           "load_circuit", "parse_head", "read_circuit_file"]


def load_circuit(spec: str | Path, *, search_dirs: tuple[Path, ...] = (), store: xr.Dataset | None = None,
                 condition: str | None = None) -> Circuit:
    """A built-in circuit by name ('ioi23', 'ioi26'), a TOML/JSON circuit file (``builtin:MODEL/FILE``
    for one shipped beside a built-in model), or 'effects:K', the causal
    circuit of the store's effects of kind K (store: the opened store; condition: whose prompts to
    average over when it has targets, see analysis.effects.effect_sample).

    Relative file paths are tried as given, then under each of ``search_dirs`` (the report passes the
    store's parent directory so a run config's relative circuit path still resolves).
    """
    text = str(spec)
    if text.startswith(EFFECTS_CIRCUIT):
        return effects_circuit(text[len(EFFECTS_CIRCUIT):], store, condition)
    if text in BUILTIN:
        resource = resources.files("analysis") / "circuits" / f"{text}.toml"
        return from_mapping(tomllib.loads(resource.read_text()), name=text, source=text)
    if text.startswith(BUILTIN_PREFIX):  # a circuit file shipped beside a built-in model
        from jaxdiag.paths import resolve_path

        text = str(resolve_path(text, Path.cwd()))
    path = Path(text)
    candidates = [path] + ([Path(d) / path for d in search_dirs] if not path.is_absolute() else [])
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise AnalysisError(f"unknown circuit {text!r}: not one of {', '.join(BUILTIN)} and no such file")
    return from_mapping(read_circuit_file(found), name=found.stem, source=str(found), base=found.parent)


def effects_circuit(kind: str, store: xr.Dataset | None, condition: str | None) -> Circuit:
    """The causal circuit of effect kind `kind` (the default analysis.causal.CircuitRule), roles by sign."""
    name = f"{EFFECTS_CIRCUIT}{kind}"
    if store is None:
        raise AnalysisError(f"circuit {name!r} is read from a store's causal effects, and no store was given")
    # imported here, not at the top: circuit-file reading (also used by jaxdiag's run-config check) stays
    # free of the statistics stack
    from analysis.causal import CircuitRule, causal_roles
    from analysis.effects import effect_sample

    sample = effect_sample(store, kind, prefer=condition)
    rule = CircuitRule()
    roles = causal_roles(sample, rule)
    if not roles:
        raise AnalysisError(f"causal circuit {name!r} is empty: no head passes the rule ({rule.text()})")
    where = f"over {', '.join(sample.conditions)} prompts"
    return Circuit(name, roles, f"causal circuit of effect_{kind} {where}: {rule.text()}", None,
                   f"store effect_{kind}")
