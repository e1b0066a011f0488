"""Run configs: a TOML file (or a named preset shipped in the package) plus command-line overrides.

    model = "gpt2"                  # hub id, local directory, or builtin:NAME (jaxdiag/data/NAME)
    precision = "highest"           # highest | default | bf16
    query = "last"                  # last | all
    prepend_bos = true
    batch_size = 32                 # prompts per device per step (fixes the compiled shapes)
    seed = 0
    circuit = "ioi23"               # for `jaxdiag report`: ioi23 | ioi26 | a circuit file
    conditions = ["ioi", "non_ioi"] # the report's a / b
    # probes = ["my_probes:first_attn"]  # user probes (jaxdiag.probe), stored beside the built-ins

    [prompts]
    source = "ioi"                  # ioi-blog | ioi | jsonl | induction
    n_prompts = 5000                # per condition
    n_tokens = 15                   # ioi only
    # pairs = true                  # ioi only: each non-IOI prompt is its IOI prompt's ABC counterfactual
    # path = "prompts.jsonl"        # jsonl only (relative to this file)
    # segment_length = 20           # induction only

    # mesh = { data = 2, model = 4 }  # parameters sharded over 4 devices, batches over 2 rows of them

Everything is validated here, before any model is loaded or store touched. Relative paths are
resolved against the config file's directory; ``builtin:`` paths against the package's data.
"""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any, Sequence

from jaxdiag.circuits import BUILTIN as BUILTIN_CIRCUITS, EFFECTS_CIRCUIT, from_mapping, read_circuit_file
from jaxdiag.errors import AnalysisError, JaxdiagError
from jaxdiag.paths import builtin_models, package_data, presets_dir, resolve_path, user_path
from jaxdiag.sweep.prompts import SOURCES
from jaxdiag.schema import BUILTIN_PREFIX, RUN_KINDS, PRECISIONS, QUERIES, MeshShape

BUILTIN = BUILTIN_PREFIX
DEFAULT_PRESET = "default"
DEFAULT_CONDITIONS = {"ioi-blog": ("ioi", "non_ioi"), "ioi": ("ioi", "non_ioi"), "induction": ("repeated", "random")}


def preset_names() -> list[str]:
    return sorted(p.stem for p in presets_dir().glob("*.toml"))


@dataclasses.dataclass(frozen=True)
class PromptSpec:
    source: str
    n_prompts: int | None = None  # per condition; None: the source's own size (ioi-blog 50, a whole file)
    n_tokens: int = 15
    segment_length: int = 20
    path: str | None = None
    pairs: bool = False  # ioi only: the non-IOI prompts are the IOI prompts' ABC counterfactuals


    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"source": self.source, "n_prompts": self.n_prompts}
        if self.source == "ioi":
            out["n_tokens"] = self.n_tokens
            if self.pairs:  # absent when off: configs of earlier versions resume unchanged
                out["pairs"] = True
        if self.source == "induction":
            out["segment_length"] = self.segment_length
        if self.source == "jsonl":
            out["path"] = self.path
        return out


@dataclasses.dataclass(frozen=True)
class RunConfig:
    model: str
    prompts: PromptSpec
    revision: str | None = None
    precision: str = "highest"
    query: str = "last"
    prepend_bos: bool = True
    batch_size: int = 32
    chunk_size: int | None = None  # prompts per store chunk; None: chosen from the shapes
    seed: int = 0
    circuit: str | dict | None = None
    conditions: tuple[str, ...] | None = None
    effects: tuple[str, ...] = ()  # causal-effect kinds (RUN_KINDS) to compute beside the diagnostics
    effects_reference: str | None = None  # condition whose mean head outputs "mean" uses; None: the second
    probes: tuple[str, ...] = ()  # user probes, "module:function" (jaxdiag.probes.custom), stored beside the built-ins
    mesh: MeshShape = MeshShape()  # devices on the data and model axes (jaxdiag.models.sharding)

    def to_dict(self) -> dict[str, Any]:
        """The config as recorded in a store's ``config`` attribute (and compared on --resume)."""
        out = dataclasses.asdict(self)
        out["prompts"] = self.prompts.to_dict()
        out["conditions"] = list(self.conditions) if self.conditions else None
        # a run without effects records exactly what earlier versions did (resume, bit-identical stores)
        if self.effects:
            out["effects"] = list(self.effects)
        else:
            del out["effects"], out["effects_reference"]
        if self.probes:
            out["probes"] = list(self.probes)
        else:  # absent without user probes, as earlier versions recorded it
            del out["probes"]
        # Only the model axis changes the numbers (it splits sums across devices); the data axis
        # does not, so a data-only run records what earlier versions did and resumes on any data size.
        if self.mesh.model > 1:
            out["mesh"] = {"model": self.mesh.model}
        else:
            del out["mesh"]
        return out

    def reference_condition(self, found: Sequence[str]) -> str | None:
        """The condition whose mean head outputs mean-ablation uses: as configured, else the second of
        the run's conditions (or of the conditions ``found`` in the prompts, in their order)."""
        conditions = self.conditions or tuple(found)
        return self.effects_reference or (conditions[1] if len(conditions) > 1 else None)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)


_TOP_KEYS = {f.name for f in dataclasses.fields(RunConfig)}
_PROMPT_KEYS = {f.name for f in dataclasses.fields(PromptSpec)}


def read_toml(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JaxdiagError(f"cannot read run config {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise JaxdiagError(f"run config {path} is not UTF-8 text (byte {exc.start})") from None
    except tomllib.TOMLDecodeError as exc:
        raise JaxdiagError(f"run config {path} is not valid TOML: {exc}") from None


def preset_path(name: str) -> Path:
    path = presets_dir() / f"{name.replace('-', '_')}.toml"
    if not path.is_file():
        raise JaxdiagError(f"unknown preset {name!r} (available: {', '.join(preset_names())})")
    return path


def load_config(config_file: str | None = None, *, preset: str | None = None,
                overrides: dict[str, Any] | None = None) -> RunConfig:
    """A validated :class:`RunConfig` from a TOML file or a preset (default: "default"), then overrides.

    ``overrides`` holds command-line values (None = not given): model, prompts (a JSONL path, which
    switches the source to jsonl), n_prompts, query, prepend_bos, batch_size, precision, seed, chunk_size.
    """
    if config_file is not None and preset is not None:
        raise JaxdiagError("give a CONFIG file or --preset, not both")
    path = Path(config_file) if config_file is not None else preset_path(preset or DEFAULT_PRESET)
    raw = read_toml(path)
    base = path.resolve().parent
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    _check_flags(overrides)
    cwd = Path.cwd()
    prompts_raw = raw.get("prompts", {})
    if not isinstance(prompts_raw, dict):
        raise JaxdiagError(f"{path}: 'prompts' must be a table ([prompts])")
    prompts_raw = dict(prompts_raw)
    if "prompts" in overrides:  # --prompts FILE: a JSONL file relative to where the user is
        prompts_raw = {"source": "jsonl", "path": str(resolve_path(overrides.pop("prompts"), cwd))}
        # the conditions and the effects' task belonged to the replaced source (--effects still applies)
        raw = {k: v for k, v in raw.items() if k not in ("conditions", "effects", "effects_reference")}
    elif prompts_raw.get("source") == "jsonl" and isinstance(prompts_raw.get("path"), str):
        prompts_raw["path"] = str(resolve_path(prompts_raw["path"], base))
    if "n_prompts" in overrides:
        prompts_raw["n_prompts"] = overrides.pop("n_prompts")
    if "model" in overrides and not overrides["model"].startswith(BUILTIN) and user_path(overrides["model"]).exists():
        overrides["model"] = str(user_path(overrides["model"]).resolve())
    if "model" in overrides and overrides["model"] != raw.get("model"):
        own = model_circuit(overrides["model"])
        if own is not None:  # the file's circuit named its own model's heads; this model ships its circuit
            raw = {**raw, "circuit": own}
    merged = {k: v for k, v in raw.items() if k != "prompts"} | overrides
    return _validate(merged, prompts_raw, source=str(path), base=base)


def model_circuit(model: str) -> str | None:
    """The circuit file a model directory ships (``circuit.toml``, as jaxdiag's trained models do), or None."""
    if model.startswith(BUILTIN):
        return f"{model}/circuit.toml" if (resolve_path(model, Path.cwd()) / "circuit.toml").is_file() else None
    path = user_path(model) / "circuit.toml"
    return str(path) if path.is_file() else None


# Command-line overrides that must be positive integers, by flag: their errors name the flag, not the file.
_POSITIVE_FLAGS = {"batch_size": "--batch-size", "chunk_size": "--chunk-size", "n_prompts": "--n-prompts"}


def _check_flags(overrides: dict[str, Any]) -> None:
    """Errors in command-line values, named by their flag (the file they override is not at fault)."""
    for key, flag in _POSITIVE_FLAGS.items():
        value = overrides.get(key)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
            raise JaxdiagError(f"{flag} must be an integer >= 1, not {value!r}")
    if isinstance(overrides.get("mesh"), str):
        overrides["mesh"] = MeshShape.parse(overrides["mesh"], source="--mesh")
    effects = overrides.get("effects")
    if isinstance(effects, str):
        unknown = [kind for kind in (k.strip() for k in effects.split(",")) if kind and kind not in RUN_KINDS]
        if unknown:
            raise JaxdiagError(f"--effects: unknown effect {unknown[0]!r} (choose from {', '.join(RUN_KINDS)})")


def _check_type(source: str, key: str, value: Any, kind: type | tuple[type, ...]) -> None:
    counts = kind is int or (isinstance(kind, tuple) and int in kind)
    if not isinstance(value, kind) or (counts and isinstance(value, bool)):  # True is an int to Python, not a count
        names = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise JaxdiagError(f"{source}: {key} must be {names}, not {value!r}")


def _validate(raw: dict[str, Any], prompts: dict[str, Any], *, source: str, base: Path) -> RunConfig:
    unknown = sorted(set(raw) - _TOP_KEYS) + [f"prompts.{k}" for k in sorted(set(prompts) - _PROMPT_KEYS)]
    if unknown:
        raise JaxdiagError(f"{source}: unknown key(s) {', '.join(unknown)}")
    # wrongly typed values first: a file with batch_size = "big" is about batch_size, whatever else it lacks
    for key, kind in (("model", str), ("precision", str), ("query", str), ("prepend_bos", bool), ("batch_size", int),
                      ("seed", int), ("revision", (str, type(None))), ("chunk_size", (int, type(None)))):
        if key in raw:
            _check_type(source, key, raw[key], kind)
    if "model" not in raw:
        raise JaxdiagError(f"{source}: no model (set model = \"gpt2\", a directory, or pass --model)")
    if "source" not in prompts:
        raise JaxdiagError(f"{source}: no prompt source (set [prompts] source = {' | '.join(SOURCES)}, or pass --prompts FILE)")
    for key, kind in (("source", str), ("n_prompts", (int, type(None))), ("n_tokens", int),
                      ("segment_length", int), ("path", str), ("pairs", bool)):
        if key in prompts:
            _check_type(source, f"prompts.{key}", prompts[key], kind)
    if raw.get("precision", "highest") not in PRECISIONS:
        raise JaxdiagError(f"{source}: precision must be one of {', '.join(PRECISIONS)}, not {raw['precision']!r}")
    if raw.get("query", "last") not in QUERIES:
        raise JaxdiagError(f"{source}: query must be one of {', '.join(QUERIES)}, not {raw['query']!r}")
    if raw.get("batch_size", 1) < 1 or (raw.get("chunk_size") or 1) < 1:
        raise JaxdiagError(f"{source}: batch_size and chunk_size must be >= 1")
    if prompts["source"] not in SOURCES:
        raise JaxdiagError(f"{source}: prompts.source must be one of {', '.join(SOURCES)}, not {prompts['source']!r}")
    if (prompts.get("n_prompts") or 1) < 1 or prompts.get("n_tokens", 1) < 1 or prompts.get("segment_length", 1) < 1:
        raise JaxdiagError(f"{source}: n_prompts, n_tokens and segment_length must be >= 1")
    if prompts.get("pairs") and prompts["source"] != "ioi":
        raise JaxdiagError(f"{source}: prompts.pairs applies to the ioi source only (jsonl prompts give their own 'pair')")
    if prompts["source"] == "jsonl":
        if "path" not in prompts:
            raise JaxdiagError(f"{source}: prompts.source = \"jsonl\" needs prompts.path")
        if not Path(prompts["path"]).is_file():
            raise JaxdiagError(f"prompt file {prompts['path']} does not exist")
    effects = raw.get("effects", [])
    if isinstance(effects, str):  # --effects zero,mean
        effects = [kind.strip() for kind in effects.split(",") if kind.strip()]
    if not isinstance(effects, list) or not all(isinstance(kind, str) for kind in effects):
        raise JaxdiagError(f"{source}: effects must be a list of names, e.g. [\"zero\", \"patch\"]")
    unknown_effects = [kind for kind in effects if kind not in RUN_KINDS]
    if unknown_effects:
        raise JaxdiagError(f"{source}: unknown effect {unknown_effects[0]!r} (choose from {', '.join(RUN_KINDS)})")
    effects = tuple(kind for kind in RUN_KINDS if kind in effects)  # one order, however given
    if "effects_reference" in raw:
        _check_type(source, "effects_reference", raw["effects_reference"], str)
    model = raw["model"]
    if model.startswith(BUILTIN) and model not in builtin_models():
        raise JaxdiagError(f"{source}: no built-in model {model!r} (available: {', '.join(builtin_models()) or 'none'})")
    probes = _check_probes(raw.get("probes", []), source, base)
    conditions = raw.get("conditions")
    if conditions is not None:
        if (not isinstance(conditions, list) or len(conditions) != 2
                or not all(isinstance(c, str) and c for c in conditions) or conditions[0] == conditions[1]):
            raise JaxdiagError(f"{source}: conditions must be two different condition names, e.g. [\"ioi\", \"non_ioi\"]")
        conditions = tuple(conditions)
    else:
        conditions = DEFAULT_CONDITIONS.get(prompts["source"])
    return RunConfig(
        model=model,
        prompts=PromptSpec(**prompts),
        revision=raw.get("revision"),
        precision=raw.get("precision", "highest"),
        query=raw.get("query", "last"),
        prepend_bos=raw.get("prepend_bos", True),
        batch_size=raw.get("batch_size", 32),
        chunk_size=raw.get("chunk_size"),
        seed=raw.get("seed", 0),
        circuit=_resolve_circuit(raw.get("circuit"), source, base, effects),
        conditions=conditions,
        effects=effects,
        effects_reference=raw.get("effects_reference") if effects else None,
        probes=probes,
        mesh=MeshShape.parse(raw.get("mesh"), source=f"{source}: mesh"),
    )


def _check_probes(value: Any, source: str, base: Path) -> tuple[str, ...]:
    """``probes = ["module:function", ...]``: each imported now (a module beside the config file is
    found), so a bad name fails before any model is loaded."""
    if not isinstance(value, list) or not all(isinstance(spec, str) for spec in value):
        raise JaxdiagError(f"{source}: probes must be a list of \"module:function\" names")
    if value:
        from jaxdiag.probes import stored_variables
        from jaxdiag.probes.custom import resolve_probe
        from jaxdiag.sweep.runner import SWEEP_PROBES

        stored_variables(SWEEP_PROBES + tuple(resolve_probe(spec, source, base) for spec in value))
    return tuple(value)


def _resolve_circuit(value: Any, source: str, base: Path, effects: tuple[str, ...] = ()) -> str | dict | None:
    """A circuit name stays a name; a circuit file is read and kept inline, so the store is self-contained."""
    if value is None or isinstance(value, dict):
        return value
    _check_type(source, "circuit", value, str)
    if value in BUILTIN_CIRCUITS:
        return value
    if value.startswith(EFFECTS_CIRCUIT):  # the causal circuit of a kind this run computes
        kind = value[len(EFFECTS_CIRCUIT):]
        if kind not in effects:
            raise JaxdiagError(f"{source}: circuit {value!r} needs effects to include {kind!r}")
        return value
    path = resolve_path(value, base)
    if not path.is_file():
        raise JaxdiagError(f"{source}: circuit {value!r} is neither {' nor '.join(BUILTIN_CIRCUITS)} nor an existing file")
    try:  # parsed and checked now, before any model is loaded
        table = read_circuit_file(path)
        from_mapping(table, name=path.stem, source=str(path))
    except AnalysisError as exc:
        raise JaxdiagError(str(exc)) from None
    return table
