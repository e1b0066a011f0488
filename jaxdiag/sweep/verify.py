"""The AtP* workflow (Kramar et al. 2024) as a command: rank heads by a cheap estimate, verify the top
ones by exact patching on the same prompts, and bound what the unverified rest could still hide.

    jaxdiag verify STORE.zarr --out DIR [--method atpstar_patch] [--top 10] [--sample 10]

1. Rank every head by the store's cheap estimate (``atpstar_K``: its mean; ``atp_K``: |its mean|)
   over the prompts that have one.
2. Exact effect K (one edited run per head, :func:`jaxdiag.causal.effects.head_effects` restricted to
   the chosen heads) for the top ``top`` heads and for ``sample`` heads drawn at random from the
   rest, on the same prompts, with the model the store names (its weights' sha256 must match).
3. A head "matters" when |mean exact effect| >= ``fraction`` x the largest among the verified ones
   (the report's causal-circuit size cut). If k of the m sampled unverified heads matter, the share
   of all unverified heads that matter is below the one-sided 95% Clopper-Pearson bound
   ``beta.ppf(0.95, k + 1, m - k)``; times their number, that bounds the false negatives left.

Exact patching is paid for ``top + sample`` heads instead of all of them.
"""

from __future__ import annotations

import dataclasses
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from jaxdiag.completeness import check_complete, complete_pairs
from jaxdiag.errors import JaxdiagError
from jaxdiag.schema import MeshShape, edit_of

CONFIDENCE = 0.95


@dataclasses.dataclass(frozen=True)
class HeadCheck:
    layer: int
    head: int
    estimate: float  # the cheap method's ranking score
    rank: int  # 1 = ranked first by the cheap method
    exact_mean: float
    exact_ci: tuple[float, float]  # 95% t interval over prompts
    matters: bool


@dataclasses.dataclass(frozen=True)
class Verification:
    method: str
    exact_kind: str
    n_prompts: int
    n_heads: int
    threshold: float
    verified: list[HeadCheck]  # the top heads by the cheap method
    sampled: list[HeadCheck]  # random heads from the rest
    share_bound: float  # one-sided 95% upper bound on the share of unverified heads that matter
    missed_bound: float  # share_bound x the number of unverified heads
    incomplete: str | None = None  # an incomplete store's note (--allow-incomplete): only its complete pairs

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def verify(store: str | Path, *, method: str | None = None, top: int = 10, sample: int = 10, seed: int = 0,
           fraction: float = 0.2, batch_size: int = 32, allow_incomplete: bool = False) -> Verification:
    """Run the workflow on a store made with a cheap effect kind (see the module docstring). An incomplete store
    is refused unless allow_incomplete; then only its prompts whose pair partner is stored count."""
    from scipy import stats

    from jaxdiag.sweep.store import open_dataset

    ds = open_dataset(store)
    incomplete = check_complete(ds, str(store), allow_incomplete)
    kinds = list(ds.attrs.get("effects") or [])
    cheap = [k for k in kinds if k.startswith(("atpstar_", "atp_"))]
    method = method or next((k for k in cheap if k.startswith("atpstar_")), cheap[0] if cheap else None)
    if method is None or method not in cheap:
        raise JaxdiagError(f"{store} has no attribution-patching estimates to rank by{f' ({method!r})' if method else ''}: "
                           f"{_effects_hint(ds)}")
    if top < 1 or sample < 0 or not 0 < fraction <= 1:
        raise JaxdiagError("--top must be >= 1, --sample >= 0, and --fraction in (0, 1]")
    estimate = ds[f"effect_{method}"].load()
    finite = np.isfinite(estimate.values).all(axis=(2, 3))  # [condition, prompt]: prompts with a target
    if incomplete is not None:  # a prompt whose partner was never stored cannot be patched
        finite &= complete_pairs(ds, tuple(str(c) for c in ds["condition"].values))
    if not finite.any():
        raise JaxdiagError(f"no prompt of {store} has a finite {method}")
    per_head = estimate.values[finite].mean(axis=0)  # [layer, head]
    score = per_head if method.startswith("atpstar_") else np.abs(per_head)
    n_layer, n_head = score.shape
    order = [tuple(int(x) for x in np.unravel_index(i, score.shape)) for i in np.argsort(-score, axis=None, kind="stable")]
    top = min(top, len(order))
    rest = order[top:]
    rng = np.random.default_rng(seed)
    sampled = [rest[i] for i in sorted(rng.choice(len(rest), size=min(sample, len(rest)), replace=False))] if rest else []
    chosen = order[:top] + sampled

    exact = _exact_effects(ds, edit_of(method), finite, chosen, batch_size)  # [prompt, layer, head]
    with warnings.catch_warnings():  # unverified heads are all-NaN columns: their mean is NaN, as meant
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(exact, axis=0)
        spread = np.nanstd(exact, axis=0, ddof=1)
    threshold = fraction * np.nanmax(np.abs(means[tuple(np.array(order[:top]).T)]))
    n = exact.shape[0]
    half = stats.t.ppf(0.975, n - 1) * spread / np.sqrt(n) if n > 1 else np.full(means.shape, np.nan)

    def check(head: tuple[int, int]) -> HeadCheck:
        l, h = head
        return HeadCheck(l, h, float(score[l, h]), order.index(head) + 1, float(means[l, h]),
                         (float(means[l, h] - half[l, h]), float(means[l, h] + half[l, h])),
                         bool(abs(means[l, h]) >= threshold))

    checked = [check(h) for h in sampled]
    k, m = sum(c.matters for c in checked), len(checked)
    share = float(stats.beta.ppf(CONFIDENCE, k + 1, m - k)) if m else 1.0
    return Verification(method, edit_of(method), int(n), n_layer * n_head, float(threshold),
                        [check(h) for h in order[:top]], checked, share, share * len(rest), incomplete)


def _effects_hint(ds) -> str:
    """How to make a store verify can read, or why this store's model cannot give one (an encoder without its
    masked-LM head has no task metric, so ``--effects`` is refused for it: suggesting it would send the user
    into a second error)."""
    from jaxdiag.checkpoint import resolve
    from jaxdiag.models.load import read_config
    from jaxdiag.models.registry import registered

    hint = "run with --effects atpstar_patch (or atp_K)"
    try:
        config = json.loads(ds.attrs["config"])
        checkpoint = resolve(config["model"], config.get("revision"))
        family = read_config(checkpoint.directory)
        reason = registered(family.model_type).model.effects_reason(family)
    except (KeyError, TypeError, ValueError, JaxdiagError):  # the model is gone or unreadable: the plain hint
        return hint
    return hint if reason is None else f"its model {config['model']!r} has none to give ({reason})"


def _exact_effects(ds, kind: str, finite: np.ndarray, heads: list[tuple[int, int]], batch_size: int) -> np.ndarray:
    """``[prompt, layer, head]`` exact effects of ``heads`` (NaN elsewhere) on the store's prompts with a target."""
    import jax
    import jax.numpy as jnp

    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec

    from jaxdiag.checkpoint import resolve
    from jaxdiag.models.load import load_model
    from jaxdiag.models.sharding import make_mesh
    from jaxdiag.causal.effects import edit_replacement, head_effects, task_readout

    config = json.loads(ds.attrs["config"])
    checkpoint = resolve(config["model"], config.get("revision"))
    if checkpoint.weights_sha256 != ds.attrs.get("weights_sha256"):
        raise JaxdiagError(f"the model {config['model']!r} no longer has the weights the store was made with (sha256 differs)")
    # the store's model axis (sums split the same way as when it was made); rows of data are not needed
    shape = MeshShape.parse(config.get("mesh"), source="the store's mesh")
    mesh = make_mesh(MeshShape(data=1, model=shape.model)) if shape.model > 1 else None
    _, model = load_model(checkpoint, precision=config.get("precision", "highest"), mesh=mesh)
    graphdef, state = nnx.split(model)
    place = NamedSharding(mesh, PartitionSpec()) if mesh is not None else None  # inputs on every model device
    c = model.config
    tokens_all, n_all = ds["tokens"].values, ds["n_tokens"].values
    rows = np.argwhere(finite)  # (condition, prompt) of each prompt with a target
    members: dict[str, list[tuple[int, int]]] = {}
    if kind == "patch":
        pair = ds["pair"].values
        for ci, pi in np.argwhere(n_all > 0):
            members.setdefault(str(pair[ci, pi]), []).append((int(ci), int(pi)))
    if kind == "mean" and "head_mean" not in ds:
        raise JaxdiagError("mean-ablation verification needs the store's head_mean")
    out = np.full((len(rows), c.n_layer, c.n_head), np.nan)

    head_mean = ds["head_mean"].values if kind == "mean" else None

    @jax.jit
    def effects(state, tokens, lengths, target, foil, partner, position):
        model = nnx.merge(graphdef, state)
        replacement = edit_replacement(model, kind, lengths, head_mean=head_mean, partner=partner)
        readout = task_readout(model, lengths, target, foil, position)
        return head_effects(model, tokens, lengths, readout, {kind: replacement}, only=heads)[1][kind]

    by_length: dict[int, list[int]] = {}
    for i, (ci, pi) in enumerate(rows):
        by_length.setdefault(int(n_all[ci, pi]), []).append(i)
    for length, group in sorted(by_length.items()):
        for start in range(0, len(group), batch_size):
            batch = group[start : start + batch_size]
            cp = rows[batch]
            tokens = jnp.asarray(tokens_all[cp[:, 0], cp[:, 1], :length])
            lengths = jnp.full((len(batch),), length, jnp.int32)
            partner = tokens  # unused unless patching
            if kind == "patch":
                partners = [_partner(members, str(ds["pair"].values[ci, pi]), ci, pi) for ci, pi in cp]
                partner = jnp.asarray(np.stack([tokens_all[a, b, :length] for a, b in partners]))
            # stores made before metric_position read the metric at the last real position
            position = (ds["metric_position"].values[cp[:, 0], cp[:, 1]] if "metric_position" in ds
                        else np.asarray(lengths) - 1)
            inputs = (tokens, lengths, ds["target"].values[cp[:, 0], cp[:, 1]], ds["foil"].values[cp[:, 0], cp[:, 1]],
                      partner, position)
            out[batch] = np.asarray(effects(state, *(jax.device_put(x, place) for x in inputs)))
    return out


def _partner(members: dict[str, list[tuple[int, int]]], pair: str, ci: int, pi: int) -> tuple[int, int]:
    found = [(c, p) for c, p in members.get(pair, []) if c != ci]
    if not found:
        raise JaxdiagError(f"prompt {pi} of condition {ci} has no pair partner in the store")
    return found[0]


def render(result: Verification) -> str:
    """The markdown ``jaxdiag verify`` writes."""
    lines = [f"# Verifying `{result.method}` by exact `{result.exact_kind}` patching", "",
             f"{result.n_prompts} prompts with a target; {result.n_heads} heads ranked by `{result.method}`; exact "
             f"patching for the top {len(result.verified)} and {len(result.sampled)} random others. A head matters when "
             f"|mean exact effect| >= {result.threshold:.4g} (0.2 x the largest verified one; 95% t intervals over prompts).",
             *([f"> **Note:** {result.incomplete}.", ""] if result.incomplete else []),
             "", "| group | head | rank | estimate | exact mean | 95% CI | matters |", "|---|---|---|---|---|---|---|"]
    for group, checks in (("top", result.verified), ("sampled", result.sampled)):
        for c in checks:
            lines.append(f"| {group} | {c.layer}.{c.head} | {c.rank} | {c.estimate:.4g} | {c.exact_mean:+.4f} | "
                         f"[{c.exact_ci[0]:+.4f}, {c.exact_ci[1]:+.4f}] | {'yes' if c.matters else '-'} |")
    unverified = result.n_heads - len(result.verified)
    lines += ["", f"**Bound:** {sum(c.matters for c in result.sampled)} of {len(result.sampled)} sampled unverified heads "
              f"matter, so (one-sided 95%, Clopper-Pearson) at most {result.share_bound:.1%} of the {unverified} unverified "
              f"heads do: at most {result.missed_bound:.1f} false negatives left. Sample more (`--sample`) to tighten it.", ""]
    return "\n".join(lines)


def write(result: Verification, out: str | Path) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "verify.json").write_text(json.dumps(result.to_dict(), indent=2) + "\n")
    (out / "verify.md").write_text(render(result))
    return out
