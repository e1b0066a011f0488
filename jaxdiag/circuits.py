"""The circuit-file format: named sets of heads with roles, shipped or user-supplied (JAX-free).

Runs check a config's circuit with it and the shipped models' identification scripts write theirs with
it; :mod:`analysis.circuits` resolves a circuit name (built-in, file, or a store's causal circuit) with it.

A circuit file is TOML or JSON::

    name = "induction"                       # optional; defaults to the file stem
    description = "..."                      # optional
    n_layers = 3                             # optional; checked against the store when given
    n_heads = 8
    ablation = "ablation.json"               # optional; path relative to this file, or an inline table

    [roles]
    "Induction" = ["2.3", "1.5"]             # heads as "layer.head" strings or [layer, head] pairs
    "Previous Token" = ["0.4"]

An ablation file (JSON) holds one number per head, the causal effect of ablating it (e.g. the drop in
task accuracy): either ``{"layer.head": effect, ...}`` (heads not listed are NaN), a nested list
``[layer][head]``, or an object with that list under ``"effect"``.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import numpy as np

from jaxdiag.errors import AnalysisError

BUILTIN = ("ioi23", "ioi26")  # the one list of shipped circuits (analysis/circuits/<name>.toml)
EFFECTS_CIRCUIT = "effects:"  # "effects:K": the causal circuit of the store's effect kind K (analysis.causal)


def head_label(layer: int, head: int) -> str:
    """The posts' name of a head: '9.6' (circuit files, reports and figures all name heads so)."""
    return f"{int(layer)}.{int(head)}"


@dataclasses.dataclass(frozen=True)
class Circuit:
    """A named set of heads, each with a role; ``ablation`` is an optional [layer, head] effect array."""

    name: str
    roles: dict[str, tuple[tuple[int, int], ...]]
    description: str = ""
    ablation: np.ndarray | None = None
    source: str = ""

    @property
    def heads(self) -> list[tuple[int, int]]:
        """Circuit heads sorted by (layer, head), each once."""
        return sorted({h for heads in self.roles.values() for h in heads})

    @property
    def absent(self) -> bool:
        """True for :data:`NO_CIRCUIT`: the report then runs its circuit-free sections only."""
        return self.source == NO_CIRCUIT_SOURCE and not self.roles

    def role_of(self, layer: int, head: int) -> str | None:
        for role, heads in self.roles.items():
            if (layer, head) in heads:
                return role
        return None

    def mask(self, n_layers: int, n_heads: int) -> np.ndarray:
        """Boolean [layer, head] array, True on circuit heads."""
        m = np.zeros((n_layers, n_heads), dtype=bool)
        for layer, head in self.heads:
            m[layer, head] = True
        return m

    def check_fits(self, n_layers: int, n_heads: int) -> None:
        """Raise AnalysisError when the circuit names heads a n_layers x n_heads model lacks."""
        bad = [head_label(l, h) for l, h in self.heads if not (0 <= l < n_layers and 0 <= h < n_heads)]
        if bad:
            raise AnalysisError(
                f"circuit {self.name!r} names heads {', '.join(bad)} that a {n_layers}x{n_heads} model lacks"
            )
        if self.ablation is not None and self.ablation.shape != (n_layers, n_heads):
            raise AnalysisError(
                f"circuit {self.name!r}: ablation effects have shape {self.ablation.shape}, "
                f"the model has {n_layers}x{n_heads} heads"
            )
        if not self.heads and not self.absent:
            raise AnalysisError(f"circuit {self.name!r} lists no heads")
        if len(self.heads) == n_layers * n_heads:
            raise AnalysisError(f"circuit {self.name!r} contains every head; nothing to compare it with")


NO_CIRCUIT_SOURCE = "none: no --circuit given and no default for this model"
# The circuit of a store with none (no --circuit, none in the run config, no default for the model): the report
# runs the sections that need no circuit (shifts, standardised shifts, flagged heads, taxonomy, correlations,
# cross-head structure, effects) and says that the circuit tests need --circuit.
NO_CIRCUIT = Circuit(name="none", roles={}, description="no circuit given", source=NO_CIRCUIT_SOURCE)


def parse_head(item: Any, where: str) -> tuple[int, int]:
    """'9.6' or [9, 6] -> (9, 6)."""
    try:
        if isinstance(item, str):
            layer, head = item.strip().split(".")
            return int(layer), int(head)
        layer, head = item
        return int(layer), int(head)
    except (ValueError, TypeError):
        raise AnalysisError(f"{where}: head {item!r} is not 'layer.head' or [layer, head]") from None


def load_ablation(spec: Any, n_layers: int | None, n_heads: int | None, where: str, base: Path | None) -> np.ndarray:
    """Parse an ablation-effect spec (path, mapping or nested list) into a float [layer, head] array."""
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.is_absolute() and base is not None:
            path = base / path
        if not path.is_file():
            raise AnalysisError(f"{where}: ablation file {str(path)!r} not found")
        try:
            spec = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise AnalysisError(f"{where}: ablation file {str(path)!r} is not JSON ({e.msg})") from None
    if isinstance(spec, dict) and "effect" in spec:
        spec = spec["effect"]
    if isinstance(spec, dict):
        entries = {parse_head(k, where): float(v) for k, v in spec.items()}
        if n_layers is None or n_heads is None:
            n_layers = 1 + max(l for l, _ in entries)
            n_heads = 1 + max(h for _, h in entries)
        out = np.full((n_layers, n_heads), np.nan)
        for (layer, head), v in entries.items():
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise AnalysisError(f"{where}: ablation names head {head_label(layer, head)} outside {n_layers}x{n_heads}")
            out[layer, head] = v
        return out
    try:
        out = np.asarray(spec, dtype=float)
    except (ValueError, TypeError):
        raise AnalysisError(f"{where}: ablation effects must be a [layer][head] list or a 'layer.head' map") from None
    if out.ndim != 2:
        raise AnalysisError(f"{where}: ablation effects must be a [layer][head] list, got {out.ndim} dims")
    return out


def from_mapping(data: dict[str, Any], *, name: str, source: str, base: Path | None = None) -> Circuit:
    """Build a Circuit from a parsed TOML/JSON document."""
    roles_raw = data.get("roles")
    if not isinstance(roles_raw, dict) or not roles_raw:
        raise AnalysisError(f"circuit {source}: needs a non-empty [roles] table of role = [heads]")
    roles = {str(role): tuple(parse_head(h, f"circuit {source}") for h in heads) for role, heads in roles_raw.items()}
    ablation = None
    if data.get("ablation") is not None:
        ablation = load_ablation(data["ablation"], data.get("n_layers"), data.get("n_heads"), f"circuit {source}", base)
    circuit = Circuit(str(data.get("name", name)), roles, str(data.get("description", "")), ablation, source)
    if "n_layers" in data and "n_heads" in data:
        circuit.check_fits(int(data["n_layers"]), int(data["n_heads"]))
    return circuit


def circuit_toml(comments: list[str], *, name: str, description: str, n_layers: int, n_heads: int,
                 ablation: str, roles: dict[str, list[tuple[int, int]]]) -> str:
    """A circuit file (what :func:`read_circuit_file` reads): ``comments`` as ``#`` lines, the header,
    ``ablation`` (a JSON file beside it) and the ``[roles]`` table of "layer.head" lists."""
    heads = lambda members: ", ".join(f'"{head_label(l, h)}"' for l, h in members)
    lines = [*(f"# {line}" for line in comments), f'name = "{name}"', f'description = "{description}"',
             f"n_layers = {n_layers}", f"n_heads = {n_heads}", f'ablation = "{ablation}"', "", "[roles]",
             *(f'"{role}" = [{heads(members)}]' for role, members in roles.items())]
    return "\n".join(lines) + "\n"


def read_circuit_file(path: Path) -> dict[str, Any]:
    """A circuit file's document, made self-contained: ``name`` defaults to the file stem and an
    ablation file named by a relative path is read in (a run config keeps this inline in its store)."""
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, tomllib.TOMLDecodeError) as e:
        raise AnalysisError(f"circuit file {str(path)!r} does not parse: {e}".splitlines()[0]) from None
    if not isinstance(data, dict):
        raise AnalysisError(f"circuit file {str(path)!r} must hold a table")
    ablation = data.get("ablation")
    if isinstance(ablation, str):
        ablation_path = path.parent / ablation
        try:
            data["ablation"] = json.loads(ablation_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise AnalysisError(f"circuit file {str(path)!r}: cannot read its ablation file {str(ablation_path)!r}: {e}".splitlines()[0]) from None
    return {"name": path.stem} | data
