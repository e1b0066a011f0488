"""The names users see, defined once: diagnostics, store schema, run choices.

This module imports nothing heavy (no JAX, no zarr), so the analysis package, the CLI's light
commands and the run-config validator share it with the model and the sweep engine.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

from jaxdiag.errors import JaxdiagError

# 2: docs/CONTRACT.md's schema 2 -- the head-taxonomy variables (always) and causal effects (on request).
# 3: schema 3 -- direct logit attribution, the logit lens, patching by position and role_position (on request).
SCHEMA_VERSION = 3

# Per-head diagnostics, in store order: name -> (long_name, units). docs/CONTRACT.md, schema 1.
DIAGNOSTIC_ATTRS: dict[str, tuple[str, str]] = {
    "kl": ("KL(pi || uniform) = log n - H(pi)", "nats"),
    "kl_norm": ("KL(pi || uniform) / log n", "1"),
    "chi": ("Var_pi(log pi) / (log n)^2", "1"),
    "entropy": ("H(pi)", "nats"),
    "max_attn": ("max_j pi_j", "1"),
    "bos_attn": ("pi at source position 0", "1"),
    "z_excess": ("<z>_pi - mean of visible z", "score units"),
}
DIAGNOSTICS: tuple[str, ...] = tuple(DIAGNOSTIC_ATTRS)
# Head-taxonomy scores (schema 2), same dims: name -> (long_name, units).
TAXONOMY_ATTRS: dict[str, tuple[str, str]] = {
    "prev_attn": ("pi at the previous position t - 1 (NaN at t = 0)", "1"),
    "self_attn": ("pi at the query's own position t", "1"),
    "dup_attn": ("sum of pi over earlier positions holding the query's token (NaN if none)", "1"),
    "induction_attn": ("sum of pi over positions j <= t whose previous token is the query's token (NaN if none)", "1"),
    "log_z": ("log sum over visible keys of exp(z): the softmax normaliser", "score units"),
}
TAXONOMY: tuple[str, ...] = tuple(TAXONOMY_ATTRS)
# What z and pi are in every per-head variable (its "scores" attr): the scores the softmax sees, so a
# model that soft-caps them (Gemma 2) is diagnosed on the capped ones.
SCORES_NOTE = ("z = the attention scores the softmax sees: q.k * scale, soft-capped as c tanh(z / c) where the "
               "model caps them (Gemma 2's attn_logit_softcapping); pi = softmax of z over the keys the query sees")
# Every per-head variable a sweep stores for each probed query row, in store order.
HEAD_VARIABLE_ATTRS: dict[str, tuple[str, str]] = {**DIAGNOSTIC_ATTRS, **TAXONOMY_ATTRS}
HEAD_VARIABLES: tuple[str, ...] = tuple(HEAD_VARIABLE_ATTRS)

# Per-prompt coordinates every store has (besides the dimension coordinates).
PROMPT_COORDS: tuple[str, ...] = ("text", "n_tokens", "tokens")
DIMENSIONS: tuple[str, ...] = ("condition", "prompt", "layer", "head", "query", "position")

# Causal effects a run can compute (docs/CONTRACT.md, schema 2): store variable `effect_<kind>`.
# Exact effects (one edited run per head), attribution patching (AtP: first-order estimates from
# one backward pass) and AtP* (AtP with GradDrop), each of the three edits.
EXACT_KINDS: tuple[str, ...] = ("zero", "mean", "patch")
EFFECT_KINDS: tuple[str, ...] = (*EXACT_KINDS, *(f"atp_{k}" for k in EXACT_KINDS), *(f"atpstar_{k}" for k in EXACT_KINDS))


def edit_of(kind: str) -> str:
    """The edit an effect kind estimates or measures: ``atpstar_patch`` -> ``patch``."""
    return kind.rpartition("_")[2]

# Per-prompt coordinates of a run with effects: the task's token ids (-1: none), the pair id, and the
# position the metric is read at (a token index, BOS / [CLS] = 0; the last real one unless the
# prompt names one). metric_position is a schema-2 addition: stores made before it lack it, and
# readers take the last real position then.
TASK_COORDS: tuple[str, ...] = ("target", "foil", "pair", "metric_position")
_METRIC_UNITS = "logit difference (with a foil) or nats (log p(target))"
_EDITS = {"zero": "set to 0", "mean": "replaced by its mean output on the reference condition (head_mean)",
          "patch": "replaced by its output on the prompt's pair partner"}
# Per-prompt task variables: name -> (long_name, units).
TASK_ATTRS: dict[str, tuple[str, str]] = {
    "metric": ("logit(target) - logit(foil) at the prompt's metric_position (default: its last real position), "
               "or log_softmax(logits)[target] without a foil; NaN without a target", _METRIC_UNITS),
    **{f"effect_{kind}": (f"metric with the head's output (its d_head slice before c_proj, at every position) "
                          f"{how}, minus metric", _METRIC_UNITS) for kind, how in _EDITS.items()},
    **{f"effect_atp_{kind}": (f"attribution patching (AtP), the first-order estimate of effect_{kind}: sum over "
                              f"positions and the head's d_head slice of (a_ref - a) * d metric / d a on the prompt's "
                              f"own run, a_ref = the head's output {how}; signed", _METRIC_UNITS) for kind, how in _EDITS.items()},
    **{f"effect_atpstar_{kind}": (f"AtP* for head outputs (Kramar et al. 2024, GradDrop): for each layer l, AtP of "
                                  f"effect_{kind} with the gradient through layer l's residual update (attention and MLP "
                                  f"outputs) dropped; combined as sum over l of |estimate_l| / (n_layers - 1) (the "
                                  f"head's own layer gives 0); unsigned, an estimate of |effect_{kind}|", _METRIC_UNITS)
       for kind in _EDITS},
}

# Beyond whole-head effects (docs/CONTRACT.md, schema 3), asked for beside the effects (`--effects dla,lens`):
# direct logit attribution, the logit lens (with the target's rank on request) and patching by position.
POSITION_KINDS: tuple[str, ...] = ("patch_resid", "patch_attn_out", "patch_mlp_out", "patch_head_pos")
COMPONENT_KINDS: tuple[str, ...] = ("dla", "lens", "lens_rank", *POSITION_KINDS)
RUN_KINDS: tuple[str, ...] = (*EFFECT_KINDS, *COMPONENT_KINDS)  # every kind a run config's `effects` may name


def head_effect_kinds(kinds) -> tuple[str, ...]:
    """The whole-head effect kinds among a run's ``kinds`` (what ``effect_<kind> [layer, head]`` and the
    zero / mean / patch machinery are for)."""
    return tuple(kind for kind in kinds if kind in EFFECT_KINDS)


def needs_partner(kinds) -> bool:
    """Whether some kind replaces activations by the pair partner's (every prompt then needs its pair)."""
    return any(kind in POSITION_KINDS or (kind in EFFECT_KINDS and edit_of(kind) == "patch") for kind in kinds)


_DLA_NOTE = ("the direct contribution to the raw logit difference logit(target) - logit(foil) (the target's raw "
             "logit without a foil; logits before any soft cap) at metric_position, through the final norm with its "
             "scale frozen at the clean run (and a normalised attention output's norm frozen too, Gemma): "
             "gain * (c - mean(c)) . u for LayerNorm, gain * c . u for RMSNorm, u = W_U[target] - W_U[foil]; "
             "dla + dla_attn_bias + dla_mlp + dla_embed + dla_norm_bias summed = that logit difference")
_PATCH_NOTE = ("metric with {what} at one position replaced by its value on the prompt's pair partner (the partner's "
               "clean run), minus metric; NaN at positions past the prompt's end")
# name -> (long_name, units, dims after prompt). Schema 3.
COMPONENT_ATTRS: dict[str, tuple[str, str, tuple[str, ...]]] = {
    "dla": (f"head (layer, head)'s output through its rows of the output projection: {_DLA_NOTE}", "logit",
            ("layer", "head")),
    "dla_attn_bias": (f"the attention output projection's bias of the layer: {_DLA_NOTE}", "logit", ("layer",)),
    "dla_mlp": (f"the layer's MLP output (its contribution to the residual): {_DLA_NOTE}", "logit", ("layer",)),
    "dla_embed": (f"the embeddings (token + position): {_DLA_NOTE}", "logit", ()),
    "dla_norm_bias": (f"the final norm's bias, beta . u (0 for RMSNorm): {_DLA_NOTE}", "logit", ()),
    "lens_metric": ("logit lens: the metric read from the residual after the layer's block at metric_position, through "
                    "the final norm (recomputed) and the unembedding; the last layer's equals metric", _METRIC_UNITS,
                    ("layer",)),
    "lens_rank": ("logit lens: the target's rank among all tokens (0 = the top logit) read from the residual after "
                  "the layer's block at metric_position", "rank", ("layer",)),
    "effect_patch_resid": (_PATCH_NOTE.format(what="the residual stream entering the layer"), _METRIC_UNITS,
                           ("layer", "position")),
    "effect_patch_attn_out": (_PATCH_NOTE.format(what="the layer's attention output"), _METRIC_UNITS,
                              ("layer", "position")),
    "effect_patch_mlp_out": (_PATCH_NOTE.format(what="the layer's MLP output"), _METRIC_UNITS, ("layer", "position")),
    "effect_patch_head_pos": (_PATCH_NOTE.format(what="the head's output (its d_head slice before the output "
                                                      "projection)"), _METRIC_UNITS, ("layer", "head", "position")),
}
# The variables each component kind adds.
COMPONENT_VARIABLES: dict[str, tuple[str, ...]] = {
    "dla": ("dla", "dla_attn_bias", "dla_mlp", "dla_embed", "dla_norm_bias"), "lens": ("lens_metric",),
    "lens_rank": ("lens_metric", "lens_rank"), **{kind: (f"effect_{kind}",) for kind in POSITION_KINDS}}
ROLE_ATTRS = {"long_name": "the token index of each named role of the prompt (BOS counted as 0; ioi: IO, S1, S1+1, "
                           "S2, END); -1 where the prompt has no such role", "units": "position"}

QueryMode = Literal["last", "all"]
QUERIES: tuple[str, ...] = ("last", "all")
Precision = Literal["highest", "default", "bf16"]
PRECISIONS: tuple[str, ...] = ("highest", "default", "bf16")

# Names a prompt's metadata key may not take: they are the store's own variables and coordinates.
RESERVED_KEYS: frozenset[str] = frozenset({*DIMENSIONS, *PROMPT_COORDS, *HEAD_VARIABLES, *TASK_COORDS, "metric",
                                          *(f"effect_{kind}" for kind in EFFECT_KINDS), "head_mean",
                                          *COMPONENT_ATTRS, "role_position", "role"})

# `builtin:NAME` names a model or file shipped in jaxdiag/data/.
BUILTIN_PREFIX = "builtin:"


# The device mesh of a run: its axes, as run configs (``mesh = {data = D, model = M}``), the CLI
# (``--mesh data=D,model=M``) and jaxdiag.load(mesh=...) name them. jaxdiag.models.sharding builds it.
MESH_AXES: tuple[str, ...] = ("data", "model")


@dataclasses.dataclass(frozen=True)
class MeshShape:
    """How many devices each mesh axis has. ``data=None``: every local device not on ``model``
    (the default, ``model=1``, puts all local devices on ``data``: plain data parallelism)."""

    data: int | None = None
    model: int = 1

    @classmethod
    def parse(cls, value: "str | dict | MeshShape | None", *, source: str = "--mesh") -> "MeshShape":
        """From ``"data=2,model=4"``, ``{"data": 2, "model": 4}`` or a MeshShape; a one-line error otherwise."""
        if value is None:
            return cls()
        if isinstance(value, MeshShape):
            return value
        if isinstance(value, str):
            sizes: dict = {}
            for part in (p.strip() for p in value.split(",") if p.strip()):
                name, sep, size = part.partition("=")
                if not sep or not size.strip().isdigit():
                    raise JaxdiagError(f"{source}: {part!r} is not AXIS=SIZE (e.g. --mesh data=2,model=4)")
                sizes[name.strip()] = int(size)
            value = sizes
        if not isinstance(value, dict):
            raise JaxdiagError(f"{source}: a mesh is a table {{data = D, model = M}}, not {value!r}")
        unknown = sorted(set(value) - set(MESH_AXES))
        if unknown:
            raise JaxdiagError(f"{source}: unknown mesh axis {unknown[0]!r} (the axes are {', '.join(MESH_AXES)})")
        for name, size in value.items():
            if not isinstance(size, int) or isinstance(size, bool) or size < 1:
                raise JaxdiagError(f"{source}: mesh axis {name} must be an integer >= 1, not {size!r}")
        return cls(data=value.get("data"), model=value.get("model", 1))

    def to_dict(self) -> dict[str, int]:
        return {name: size for name, size in (("data", self.data), ("model", self.model)) if size is not None}
