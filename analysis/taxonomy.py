"""Head taxonomy: which heads are previous-token, induction, duplicate-token, self or sink heads.

The sweep stores, per query position t (CONTRACT.md schema 2), how much attention a head puts on
t - 1 (`prev_attn`), on t itself (`self_attn`), on earlier copies of the current token (`dup_attn`),
on tokens that followed an earlier copy of it (`induction_attn`, TransformerLens's induction
pattern) and its softmax normaliser (`log_z`); `bos_attn` (schema 1) is the attention on the first
token. Each is the TransformerLens head detector's "mul" score ΣA⊙D / ΣA of one query row (A sums to
1), so its mean over prompts is that detector's score.

A head's score on a condition is the mean over prompts of each prompt's score; a prompt's score is
its value at the last token (query="last" stores) or its mean over the query positions where the
score is defined (query="all"), so every prompt weighs the same and the bootstrap resamples prompts,
the independent units. dup_attn and induction_attn are NaN where the current token has no earlier
copy, so a condition without repeats has NaN means (never 0) and the roles that need repeats are
decided on "the condition with repeats": the one where the score is defined most often.

    labels = classify(ds)                      # (layer, head) booleans per role + a string `label`
    labels = classify(ds, thresholds={"induction": 0.6}, condition="repeated")
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np
import xarray as xr

from analysis._util import quiet
from analysis.errors import AnalysisError
from analysis.labels import HEAD_DIMS
from analysis.resampling import rng_for
from analysis.results import ConfidenceInterval, MeanResult, SinkRateResult
from analysis.shifts import percentile_interval, shift_units
from analysis.store import conditions, condition_prompts
from analysis import streaming
from analysis.streaming import DEFAULT_MEMORY, default_in_flight
from analysis.units import G_MAX, Units, unit_size
from jaxdiag.schema import TAXONOMY

# schema 2's head-taxonomy variables (dims as the diagnostics), and the scores the taxonomy reports:
# those plus schema 1's bos_attn, which decides the sink role
TAXONOMY_VARIABLES = TAXONOMY  # the store's five taxonomy variables (jaxdiag.schema)
SCORES = ("prev_attn", "self_attn", "dup_attn", "induction_attn", "bos_attn", "log_z")
NEEDS_REPEATS = ("dup_attn", "induction_attn")  # NaN wherever the current token has no earlier copy
EPSILON = 0.3  # Gu et al. 2024's sink threshold on the mean attention to the first token
ROLE_SCORES = {"previous_token": "prev_attn", "induction": "induction_attn", "duplicate_token": "dup_attn",
               "self": "self_attn", "sink": "bos_attn"}
# A head has a role when its mean score on the role's source condition is >= the threshold. 0.3 for
# every role: the cut the shipped model's identification applies to the same attention scores
# (jaxdiag.induction.identify.ROLE_SCORE) and Gu et al.'s sink epsilon; 4.5 times what uniform
# attention gives one key at n = 15 (1/15). Thresholds are settable per role.
DEFAULT_THRESHOLDS = {"previous_token": 0.3, "induction": 0.3, "duplicate_token": 0.3, "self": 0.3, "sink": EPSILON}
NO_ROLE = "none"  # `label` of a head without any role
SEED_TAXONOMY = 9  # resampling purpose of the taxonomy's bootstrap (pipeline's purposes are 1..8)


@dataclasses.dataclass(frozen=True)
class ScoreSample:
    """One score's per-prompt values on every condition, read once from the store."""

    values: dict[str, np.ndarray]  # condition -> float64 [prompt, layer, head]
    defined: dict[str, int]  # condition -> defined (prompt[, query], layer, head) entries: how often it exists


@dataclasses.dataclass(frozen=True)
class HeadTaxonomy:
    """Per-head mean scores per condition, the sink rate and every head's roles (the report's section)."""

    means: dict[str, MeanResult]  # score -> statistic etc. with dims (condition, layer, head)
    sink_rate: SinkRateResult  # dims (condition,)
    labels: xr.Dataset  # classify's output: (layer, head) booleans per role and `label`
    thresholds: dict[str, float]  # role -> threshold used
    sources: dict[str, str]  # role -> condition whose means decided it
    query_positions: str  # "last" or "all": what a prompt's score averages

    @property
    def roles(self) -> list[str]:
        return [r for r in ROLE_SCORES if r in self.labels]

    def heads_with(self, role: str) -> list[tuple[int, int]]:
        """Heads labelled role, layer-major."""
        return [(int(self.labels["layer"].values[l]), int(self.labels["head"].values[h]))
                for l, h in np.argwhere(self.labels[role].values)]

    def roles_of(self, layer: int, head: int) -> list[str]:
        return [r for r in self.roles if bool(self.labels[r].sel(layer=layer, head=head))]


def has_taxonomy(ds: xr.Dataset) -> bool:
    """Does the store hold any of schema 2's head-taxonomy variables? (Older stores hold none.)"""
    return any(v in ds.data_vars for v in TAXONOMY_VARIABLES)


def prompt_scores(ds: xr.Dataset, condition: str, variable: str) -> tuple[np.ndarray, int]:
    """float64 [prompt, layer, head] of one condition (padding prompts dropped) and how many entries are
    defined. A query="all" store's prompt score is its mean over the query positions where it is defined
    (NaN when none is)."""
    da = condition_prompts(ds, condition, variable)
    da = da.transpose("prompt", *HEAD_DIMS, *(("query",) if "query" in da.dims else ()))
    x = np.asarray(da.values, dtype=np.float64)
    defined = int(np.isfinite(x).sum())
    if x.ndim == 4:
        with quiet():  # a prompt with no defined query stays NaN
            x = np.nanmean(x, axis=3)
    return x, defined


def score_samples(ds: xr.Dataset, variables: tuple[str, ...] | None = None) -> dict[str, ScoreSample]:
    """Every score the store holds (default: SCORES), per condition, per prompt."""
    variables = tuple(v for v in (variables or SCORES) if v in ds.data_vars)
    out = {}
    for v in variables:
        read = {c: prompt_scores(ds, c, v) for c in conditions(ds)}
        out[v] = ScoreSample({c: x for c, (x, _) in read.items()}, {c: n for c, (_, n) in read.items()})
    return out


def means_of(samples: Mapping[str, ScoreSample], template: xr.Dataset) -> dict[str, xr.DataArray]:
    """Mean over prompts of each score, (condition, layer, head); NaN where no prompt defines it."""
    out = {}
    for v, sample in samples.items():
        with quiet():
            stacked = np.stack([np.nanmean(x, axis=0) for x in sample.values.values()])
        out[v] = _per_condition(stacked, list(sample.values), template, v)
    return out


def source_conditions(samples: Mapping[str, ScoreSample], condition: str | Mapping[str, str] | None = None
                      ) -> dict[str, str]:
    """Role -> the condition whose means decide it: condition (one name for every role, or role -> name),
    else the condition where the role's score is defined most often (for induction and duplicate-token
    roles, the condition with repeats; for the others, where every entry is defined, the store's first)."""
    return sources_from_defined({v: s.defined for v, s in samples.items()}, condition)


def sources_from_defined(defined: Mapping[str, Mapping[str, int]], condition: str | Mapping[str, str] | None = None
                         ) -> dict[str, str]:
    """source_conditions from the defined counts alone (score -> condition -> defined entries): what the
    streamed report (stream_taxonomy) counts block by block."""
    chosen = {r: condition for r in ROLE_SCORES} if isinstance(condition, str) else dict(condition or {})
    unknown = set(chosen) - set(ROLE_SCORES)
    if unknown:
        raise AnalysisError(f"unknown role(s) {', '.join(sorted(unknown))}: roles are {', '.join(ROLE_SCORES)}")
    out = {}
    for role, var in ROLE_SCORES.items():
        if var not in defined:
            continue
        counts = defined[var]
        if role in chosen:
            if chosen[role] not in counts:
                raise AnalysisError(f"unknown condition {chosen[role]!r}: the store has {', '.join(counts)}")
            out[role] = chosen[role]
        else:  # max keeps the first of equals: ties go to the store's order
            out[role] = max(counts, key=counts.get)
    return out


def check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """The defaults with the given roles' thresholds replaced."""
    thresholds = dict(thresholds or {})
    unknown = set(thresholds) - set(ROLE_SCORES)
    if unknown:
        raise AnalysisError(f"unknown role(s) {', '.join(sorted(unknown))}: roles are {', '.join(ROLE_SCORES)}")
    return DEFAULT_THRESHOLDS | {r: float(t) for r, t in thresholds.items()}


def label_heads(means: Mapping[str, xr.DataArray], sources: Mapping[str, str],
                thresholds: Mapping[str, float]) -> xr.Dataset:
    """(layer, head) Dataset: per role, True where the role's mean score on its source condition is >= its
    threshold (NaN means never qualify), the score itself as `<role>_score`, and `label`: the roles joined
    with "+" (NO_ROLE when none). Roles whose score is missing are left out."""
    flags, scores = {}, {}
    for role, condition in sources.items():
        score = means[ROLE_SCORES[role]].sel(condition=condition, drop=True)
        with quiet():
            flags[role] = score >= thresholds[role]
        scores[f"{role}_score"] = score
    template = next(iter(means.values())).isel(condition=0, drop=True)
    names = np.full(template.shape, "", dtype=object)
    for role, flag in flags.items():
        names = np.where(flag.values, np.where(names == "", role, names + "+" + role), names)
    label = xr.DataArray(np.where(names == "", NO_ROLE, names).astype(str), dims=HEAD_DIMS,
                         coords={d: template[d].values for d in HEAD_DIMS})
    ds = xr.Dataset({**flags, **scores, "label": label})
    ds.attrs.update(thresholds=dict(thresholds), sources=dict(sources),
                    rule="role if the mean score on the source condition >= threshold")
    return ds


def classify(ds: xr.Dataset, thresholds: Mapping[str, float] | None = None,
             condition: str | Mapping[str, str] | None = None) -> xr.Dataset:
    """Label every head of a store by role (see DEFAULT_THRESHOLDS; `thresholds` replaces some of them).

    Returns a (layer, head) Dataset with one boolean per role (previous_token: mean prev_attn >= 0.3;
    induction: mean induction_attn >= 0.3; duplicate_token: mean dup_attn >= 0.3; self: mean self_attn
    >= 0.3; sink: mean bos_attn >= 0.3), each role's score, and a string `label`. Means are over prompts of
    the role's source condition (`condition`, else see `source_conditions`). Roles whose variable the
    store lacks are left out: a store written before the taxonomy variables gets the sink role only.
    """
    samples = score_samples(ds, tuple(ROLE_SCORES.values()))
    if not samples:
        raise AnalysisError("store has none of the taxonomy scores (" + ", ".join(ROLE_SCORES.values()) + ")")
    return label_heads(means_of(samples, ds), source_conditions(samples, condition), check_thresholds(thresholds))


def sink_rate(mean: np.ndarray, boot: np.ndarray, epsilon: float = EPSILON,
              confidence_level: float = 0.95) -> tuple[float, ConfidenceInterval, int]:
    """Sink_eps of one condition: the share of heads whose mean bos_attn exceeds epsilon (strictly), among
    heads with a defined mean, with a percentile interval over the bootstrap replicates of the means
    (boot: [n_boot, layer, head]). (rate, interval, heads counted)."""
    finite = np.isfinite(mean)
    if not finite.any():
        return np.nan, ConfidenceInterval(np.nan, np.nan), 0
    with quiet():
        rate = float(np.mean(mean[finite] > epsilon))
        replicates = np.mean(boot[:, finite] > epsilon, axis=1)
    ci = percentile_interval(replicates, confidence_level)
    return rate, ConfidenceInterval(float(ci.low), float(ci.high)), int(finite.sum())


# one condition's mean of one score: (mean, interval, bootstrap SE, [n_boot, layer, head] replicates, finite
# prompts per head) -- what condition_mean_units gives from a score's units
ConditionMean = tuple[np.ndarray, ConfidenceInterval, np.ndarray, np.ndarray, np.ndarray]


def head_taxonomy(ds: xr.Dataset, *, n_boot: int, seed: int, thresholds: Mapping[str, float] | None = None,
                  epsilon: float = EPSILON, condition: str | Mapping[str, str] | None = None,
                  confidence_level: float = 0.95) -> HeadTaxonomy:
    """Every score's per-head mean per condition with a BCa interval (prompts resampled with replacement;
    the same draws for every score of a condition), the sink rate per condition and the heads' roles:
    stream_taxonomy with units of one prompt."""
    return stream_taxonomy(ds, n_boot=n_boot, seed=seed, thresholds=thresholds, epsilon=epsilon, condition=condition,
                           confidence_level=confidence_level, g_max=None)[0]


def assemble_taxonomy(parts: Mapping[str, list[ConditionMean]], defined: Mapping[str, Mapping[str, int]],
                      names: list[str], template: xr.Dataset, *, thresholds: Mapping[str, float] | None = None,
                      epsilon: float = EPSILON, condition: str | Mapping[str, str] | None = None,
                      confidence_level: float = 0.95) -> HeadTaxonomy:
    """The section from each score's per-condition means (parts[score][k]: condition names[k]) and the defined
    counts: the sink rate from bos_attn's replicates, the source conditions and the labels."""
    means = {}
    for v, per_condition in parts.items():
        stat, low, high, se, counts = (np.stack(x) for x in zip(*[(m, ci.low, ci.high, s, n)
                                                                   for m, ci, s, _, n in per_condition]))
        means[v] = MeanResult(_per_condition(stat, names, template, v),
                              ConfidenceInterval(_per_condition(low, names, template),
                                                 _per_condition(high, names, template)),
                              _per_condition(se, names, template), _per_condition(counts, names, template), "BCa",
                              confidence_level)
    boots = [boot for *_, boot, _ in parts["bos_attn"]]
    rates = [sink_rate(means["bos_attn"].statistic.values[k], boots[k], epsilon, confidence_level)
             for k in range(len(names))]
    coords = {"condition": np.asarray(names, dtype=str)}
    rate = SinkRateResult(
        xr.DataArray([r for r, _, _ in rates], dims="condition", coords=coords),
        ConfidenceInterval(xr.DataArray([ci.low for _, ci, _ in rates], dims="condition", coords=coords),
                           xr.DataArray([ci.high for _, ci, _ in rates], dims="condition", coords=coords)),
        float(epsilon), xr.DataArray([n for *_, n in rates], dims="condition", coords=coords))
    sources = sources_from_defined(defined, condition)
    chosen = check_thresholds(thresholds)
    labels = label_heads({v: m.statistic for v, m in means.items()}, sources, chosen)
    return HeadTaxonomy(means, rate, labels, chosen, sources, str(template.attrs.get("query_positions", "last")))


def _per_condition(values: np.ndarray, names: list[str], template: xr.Dataset | xr.DataArray,
                   name: str | None = None) -> xr.DataArray:
    return xr.DataArray(values, dims=("condition", *HEAD_DIMS),
                        coords={"condition": np.asarray(names, dtype=str),
                                **{d: template[d].values for d in HEAD_DIMS}}, name=name)


def score_rows(ds: xr.Dataset, condition: str, variable: str) -> tuple[xr.DataArray, int]:
    """One condition's taxonomy score as lazy [prompt, layer x head (x query)] rows, padding prompts dropped and
    the query positions innermost (analysis.taxonomy.prompt_scores' order), and the query positions per head (0:
    a query="last" store)."""
    da = condition_prompts(ds, condition, variable)
    query = "query" in da.dims
    da = da.transpose("prompt", *HEAD_DIMS, *(("query",) if query else ()))
    data = da.data.reshape(da.shape[0], -1)
    return xr.DataArray(data, dims=("prompt", "unit")), (int(da.sizes["query"]) if query else 0)


def stream_score(rows: xr.DataArray, query: int, size: int, memory: int, in_flight: int) -> tuple[Units, int, int]:
    """(units of the per-prompt scores, defined entries, prompts per block) of one condition's score in one pass:
    the prompt scores are formed inside each block task, so only blocks are ever in memory."""
    k = rows.shape[1] // max(query, 1)
    fixed = 4 * 8 * k * G_MAX  # the score's units
    for flight in dict.fromkeys((in_flight, 1)):  # wide query="all" rows: fewer blocks at once before giving up
        try:
            block = streaming.block_rows(1, rows.shape[1], size, memory, fixed, flight)
            break
        except AnalysisError:
            if flight == 1:
                raise
    block = max(size, block // size * size)  # whole units per block: the units never depend on the block size
    out = streaming.stream({"x": rows}, (("score", "units", "x", query), ("finite", "defined", "x")), size, size, block, {},
                 flight)
    return out["units"], int(out["defined"].sum()), block


def condition_mean_units(u: Units | None, n_prompts: int, heads: xr.DataArray, n_boot: int,
                         rng: np.random.Generator, confidence_level: float) -> ConditionMean:
    """One condition's mean of a score from its units: the mean exactly, the BCa interval of the units' bootstrap
    (shift_units of one sample). All NaN but the mean under 2 prompts (nothing to resample)."""
    shape = heads.shape
    count = (u.count.sum(axis=0) if u is not None else np.zeros(int(np.prod(shape)))).astype(np.int64).reshape(shape)
    if n_prompts < 2:
        with quiet():
            mean = u.centre().reshape(shape) if n_prompts else np.full(shape, np.nan)
        nan = np.full(shape, np.nan)
        return mean, ConfidenceInterval(nan, nan), nan, np.full((n_boot, *shape), np.nan), count
    r = shift_units(u, None, n_boot, rng, heads, confidence_level)
    ci = ConfidenceInterval(np.asarray(r.confidence_interval.low), np.asarray(r.confidence_interval.high))
    return (np.asarray(r.statistic), ci, np.asarray(r.standard_error), np.asarray(r.bootstrap_distribution), count)


def stream_taxonomy(ds: xr.Dataset, *, n_boot: int, seed: int, memory: int | None = None,
                    in_flight: int | None = None, thresholds: Mapping[str, float] | None = None,
                    epsilon: float = EPSILON, condition: str | Mapping[str, str] | None = None,
                    confidence_level: float = 0.95, g_max: int | None = G_MAX
                    ) -> tuple[HeadTaxonomy, dict[str, int], int]:
    """analysis.taxonomy.head_taxonomy over the lazy store: one pass per (condition, score) reduces the per-prompt
    scores to units of unit_size(prompts, G_MAX) prompts, from which the means (exact), the 'defined' counts
    (exact), the BCa intervals (the units' bootstrap with SEED_TAXONOMY's draws per condition) and hence the sink
    rate, source conditions and labels follow (assemble_taxonomy). Memory holds one score's units and a few
    blocks, never the prompts (g_max None: units of one prompt). Returns (taxonomy, condition -> prompts per
    unit, blocks)."""
    memory = DEFAULT_MEMORY if memory is None else memory
    in_flight = in_flight or default_in_flight()
    if "bos_attn" not in ds.data_vars:
        raise AnalysisError("store lacks variable bos_attn (the sink score)")
    names = conditions(ds)
    layers, head_ids = ds["layer"].values, ds["head"].values
    heads = xr.DataArray(np.zeros((layers.size, head_ids.size)), dims=HEAD_DIMS,
                         coords={"layer": layers, "head": head_ids})
    variables = [v for v in SCORES if v in ds.data_vars]
    parts: dict[str, list[ConditionMean]] = {v: [] for v in variables}
    defined: dict[str, dict[str, int]] = {v: {} for v in variables}
    sizes, n_blocks = {}, 0
    for i, c in enumerate(names):
        for v in variables:
            rows, query = score_rows(ds, c, v)
            n = int(rows.shape[0])
            sizes[c] = unit_size(n, g_max)
            units, count, block = stream_score(rows, query, sizes[c], memory, in_flight) if n else (None, 0, 1)
            n_blocks += -(-n // block)
            mean = condition_mean_units(units, n, heads, n_boot, rng_for(seed, SEED_TAXONOMY, i), confidence_level)
            if v != "bos_attn":  # only the sink rate reads replicates: keep memory to one score's
                mean = (*mean[:3], None, mean[4])
            parts[v].append(mean)
            defined[v][c] = count
    taxonomy = assemble_taxonomy(parts, defined, names, ds, thresholds=thresholds, epsilon=epsilon,
                                 condition=condition, confidence_level=confidence_level)
    return taxonomy, sizes, n_blocks
