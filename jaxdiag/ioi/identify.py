"""Find the IOI model's circuit without the attention diagnostics, and write its circuit file.

    python -m jaxdiag.ioi.identify jaxdiag/data/ioi-4l8h

Evidence, all from the model's own forward passes on IOI prompts of the evaluation templates (none
trained on) and their ABC counterfactuals (Wang et al. 2022: the same sentence with three fresh
names, so no name is repeated and the indirect object cannot be identified):

- causal: every head's effect on the IOI metric logit(IO) - logit(S) when its output (at every
  position) is patched from the ABC prompt, mean-ablated (its mean over ABC prompts) or
  zero-ablated, with the sweep's machinery (:func:`jaxdiag.causal.effects.head_effects`);
- attention, to name roles as Wang et al. do: from END (the last token) to IO (name movers; a
  negative causal effect of removing them means they raise the IO logit, a positive one that they
  lower it: negative name movers) or to S2 (S-inhibition); from S2 to S1 (duplicate-token) or to
  the token after S1 (induction); from every token to the one before it (previous-token).

A head is in the circuit when removing it moves the logit difference by at least ``EFFECT_SHARE``
of the largest single-head effect of the same kind (by patching or by mean-ablation; the report's
causal-circuit cut): a share of the clean logit difference would miss redundant heads, which matter
little one at a time although together they carry the task. Its role is the attention pattern it
shows most strongly, if one reaches ``ROLE_SCORE``, else "Other". ``circuit.toml`` lists the roles and points
to ``identify.json`` (per-head effects and scores, the joint-ablation check against random heads).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiag.circuits import circuit_toml
from jaxdiag.checkpoint import resolve
from jaxdiag.models.load import load_model
from jaxdiag.causal.effects import head_effects, head_output_sums, head_outputs, task_readout
from jaxdiag.models.edits import mean_heads
from jaxdiag.ioi import data
from jaxdiag.ioi.metrics import TaskSet, compile_logit_diff
from jaxdiag.models.gpt2 import GPT2
from jaxdiag.probes import ATTENTION_PROBE
from jaxdiag.sweep.prompts import BLOG_ABBA, IOI_ABBA

ROLE_SCORE = 0.3  # mean attention on the role's target (as the induction model's identification)
EFFECT_SHARE = 0.2  # |mean effect| as a share of the largest head's, per kind (analysis.causal's cut)
IDENTIFY_SEED = 2024  # identification prompts: a generator of their own, apart from training and evaluation
N_RANDOM_DRAWS = 200
ROLES = ("Name Mover", "Negative Name Mover", "S-Inhibition", "Induction", "Duplicate Token", "Previous Token")
Head = tuple[int, int]


@dataclasses.dataclass(frozen=True)
class PairedSet:
    """IOI prompts, their ABC counterfactuals (same lengths), and where IO, S1, S2 sit in each IOI prompt."""

    ioi: TaskSet
    abc: TaskSet
    io: np.ndarray
    s1: np.ndarray
    s2: np.ndarray


def paired_set(n: int, seed: int = IDENTIFY_SEED, templates: Sequence[str] | None = None,
               names: Sequence[str] = data.ALL_NAMES) -> PairedSet:
    """``n`` IOI prompts (ABBA/BABA alternating) and their ABC counterfactuals.

    Default templates: the held-out ones, the posts' and the generator's (none trained on).
    """
    templates = tuple(templates or data.HELDOUT_TEMPLATES + BLOG_ABBA + IOI_ABBA)
    rng = np.random.default_rng(seed)
    ioi, abc = [], []
    for i in range(n):
        picked = [names[j] for j in rng.choice(len(names), 5, replace=False)]
        template = templates[rng.integers(len(templates))]
        place, obj = data.PLACES[rng.integers(len(data.PLACES))], data.OBJECTS[rng.integers(len(data.OBJECTS))]
        order = ("abba", "baba")[i % 2]
        ioi.append(data.ioi_example(template, picked[0], picked[1], place, obj, order=order))
        t = data.three_name(data.baba(template) if order == "baba" else template)
        # ABC: the IO and both subject slots get three other names; the metric stays the clean one's
        text = t.format(A=picked[2], B=picked[3], C=picked[4], P=place, O=obj)
        abc.append(data.Example(text, ioi[-1].targets, ioi[-1].foil, "abc"))
    clean, counter = TaskSet.from_examples(ioi), TaskSet.from_examples(abc)
    if not np.array_equal(clean.lengths, counter.lengths):
        raise AssertionError("an ABC counterfactual differs in length from its IOI prompt")
    io = np.array([list(row).index(t) for row, t in zip(clean.tokens, clean.target)])
    s = [np.flatnonzero(row == f) for row, f in zip(clean.tokens, clean.foil)]
    return PairedSet(clean, counter, io, np.array([x[0] for x in s]), np.array([x[1] for x in s]))


def _batches(n: int, size: int):
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def abc_means(model: GPT2, pairs: PairedSet) -> np.ndarray:
    """``[layer, head, d_head]``: each head's output averaged over every real position of the ABC prompts."""
    total, count = 0.0, 0.0
    for sl in _batches(len(pairs.abc), 128):
        sums = head_output_sums(model, jnp.asarray(pairs.abc.tokens[sl]), jnp.asarray(pairs.abc.lengths[sl]))
        total = total + np.asarray(sums["head_sum"], np.float64).sum(axis=0)
        count += float(np.sum(sums["n_real"]))
    return (total / count).astype(np.float32)


def per_head_effects(model: GPT2, pairs: PairedSet, means: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, dict]:
    """Clean metric ``[n]`` and, for ``patch`` / ``mean`` / ``zero``, every head's effect ``[n, layer, head]``."""
    graphdef, state = nnx.split(model)
    cfg = model.config

    @jax.jit
    def step(state, tokens, lengths, target, foil, partner):
        m = nnx.merge(graphdef, state)
        replacements = {"patch": head_outputs(m, partner, lengths), "mean": jnp.asarray(means)[:, None],
                        "zero": jnp.zeros((cfg.n_layer, 1, cfg.n_head, cfg.d_head))}
        return head_effects(m, tokens, lengths, task_readout(m, lengths, target, foil), replacements)

    width = int(pairs.ioi.lengths.max())
    clean, effects = [], {"patch": [], "mean": [], "zero": []}
    for sl in _batches(len(pairs.ioi), batch_size):
        c, e = step(state, pairs.ioi.tokens[sl, :width], pairs.ioi.lengths[sl], pairs.ioi.target[sl],
                    pairs.ioi.foil[sl], pairs.abc.tokens[sl, :width])
        clean.append(np.asarray(c))
        for k in effects:
            effects[k].append(np.asarray(e[k]))
    return np.concatenate(clean), {k: np.concatenate(v) for k, v in effects.items()}


def attention_scores(model: GPT2, pairs: PairedSet) -> dict[str, np.ndarray]:
    """Per role's pattern, ``[layer, head]`` mean attention over the IOI prompts (see the module docstring)."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def patterns(state, tokens, lengths):
        return nnx.merge(graphdef, state)(tokens, lengths, probes=(ATTENTION_PROBE,), query="all").probes["attention"]

    width = int(pairs.ioi.lengths.max())
    sums = {k: 0.0 for k in ("end_io", "end_s1", "end_s2", "s2_s1", "s2_after_s1", "previous")}
    for sl in _batches(len(pairs.ioi), 128):
        a = np.asarray(patterns(state, pairs.ioi.tokens[sl, :width], pairs.ioi.lengths[sl]))  # [b, L, H, q, k]
        b = np.arange(a.shape[0])
        end = pairs.ioi.lengths[sl] - 1
        io, s1, s2 = pairs.io[sl], pairs.s1[sl], pairs.s2[sl]
        pick = lambda q, k: a[b, :, :, q, k].sum(axis=0)
        sums["end_io"] += pick(end, io)
        sums["end_s1"] += pick(end, s1)
        sums["end_s2"] += pick(end, s2)
        sums["s2_s1"] += pick(s2, s1)
        sums["s2_after_s1"] += pick(s2, s1 + 1)
        for row, length in zip(a, pairs.ioi.lengths[sl]):
            q = np.arange(1, length)
            sums["previous"] += row[:, :, q, q - 1].mean(axis=-1)
    return {k: v / len(pairs.ioi) for k, v in sums.items()}


@dataclasses.dataclass
class Identification:
    clean: np.ndarray  # [n] clean logit differences
    effects: dict[str, np.ndarray]  # kind -> [n, layer, head]
    scores: dict[str, np.ndarray]  # pattern -> [layer, head]

    def mean_effect(self, kind: str) -> np.ndarray:
        return self.effects[kind].mean(axis=0)

    def causal(self) -> np.ndarray:
        """``[layer, head]`` bool: removing the head (patch or mean) moves the metric by >= EFFECT_SHARE
        of the largest head's move of that kind."""
        out = np.zeros(self.mean_effect("patch").shape, dtype=bool)
        for kind in ("patch", "mean"):
            size = np.abs(self.mean_effect(kind))
            out |= size >= EFFECT_SHARE * size.max()
        return out

    def role_scores(self) -> dict[str, np.ndarray]:
        """Attention score of each role. Name movers and negative name movers share END -> IO and are
        told apart by the sign of their patch effect (removing a name mover lowers the metric)."""
        raises = self.mean_effect("patch") < 0
        return {
            "Name Mover": np.where(raises, self.scores["end_io"], 0.0),
            "Negative Name Mover": np.where(raises, 0.0, self.scores["end_io"]),
            "S-Inhibition": self.scores["end_s2"],
            "Induction": self.scores["s2_after_s1"],
            "Duplicate Token": self.scores["s2_s1"],
            "Previous Token": self.scores["previous"],
        }

    def roles(self) -> dict[str, list[Head]]:
        scores = self.role_scores()
        out: dict[str, list[Head]] = {}
        for l, h in np.argwhere(self.causal()):
            best = max(ROLES, key=lambda r: scores[r][l, h])
            role = best if scores[best][l, h] >= ROLE_SCORE else "Other"
            out.setdefault(role, []).append((int(l), int(h)))
        return {r: out[r] for r in (*ROLES, "Other") if r in out}

    def heads(self) -> list[Head]:
        return sorted(h for heads in self.roles().values() for h in heads)


def identify(model: GPT2, n_prompts: int = 512) -> tuple[Identification, PairedSet, np.ndarray]:
    """Effects and attention scores on ``n_prompts`` IOI/ABC pairs; also returns the pairs and the ABC means."""
    pairs = paired_set(n_prompts)
    means = abc_means(model, pairs)
    clean, effects = per_head_effects(model, pairs, means)
    return Identification(clean, effects, attention_scores(model, pairs)), pairs, means


def joint_ablation(model: GPT2, task: TaskSet, means: np.ndarray, circuit: Sequence[Head], *,
                   draws: int = N_RANDOM_DRAWS, seed: int = 0) -> dict:
    """Share of the mean logit difference removed by mean-ablating ``circuit`` together, and by as
    many random non-circuit heads (``draws`` draws)."""
    logit_diff = compile_logit_diff(model)
    n_layer, n_head = means.shape[:2]
    clean = float(np.mean(logit_diff(task)))
    removed = lambda heads: 1.0 - float(np.mean(logit_diff(task, mean_heads(means, heads)))) / clean
    others = [(l, h) for l in range(n_layer) for h in range(n_head) if (l, h) not in set(circuit)]
    rng = np.random.default_rng(seed)
    random_removed = np.array([removed([others[i] for i in rng.choice(len(others), len(circuit), replace=False)])
                               for _ in range(draws)])
    return {
        "clean_mean_logit_diff": round(clean, 3),
        "circuit_removed": round(removed(circuit), 4),
        "random_removed": {"draws": draws, "k": len(circuit), "mean": round(float(random_removed.mean()), 4),
                           "median": round(float(np.median(random_removed)), 4),
                           "p95": round(float(np.percentile(random_removed, 95)), 4),
                           "max": round(float(random_removed.max()), 4)},
    }


def _grid(a: np.ndarray, digits: int = 4) -> list[list[float]]:
    return np.round(a.astype(float), digits).tolist()


def write_circuit(directory: Path, found: Identification, joint: dict, n_prompts: int) -> None:
    """``circuit.toml`` (roles, for ``jaxdiag report``) and ``identify.json`` (per-head evidence)."""
    n_layers, n_heads = found.mean_effect("patch").shape
    roles = found.roles()
    comments = [
        "The IOI circuit of jaxdiag's shipped IOI model, found WITHOUT the attention diagnostics",
        "(python -m jaxdiag.ioi.identify): heads whose patching from ABC counterfactuals or mean-ablation",
        f"moves logit(IO) - logit(S) by >= {EFFECT_SHARE} of the largest head's move, named by the attention pattern",
        f"they show most (>= {ROLE_SCORE}; else Other). identify.json holds the per-head effects.",
    ]
    (directory / "circuit.toml").write_text(circuit_toml(
        comments, name=directory.name, n_layers=n_layers, n_heads=n_heads, ablation="identify.json",
        description=f"IOI circuit of jaxdiag's shipped {n_layers}x{n_heads} GPT-2 (identified by patching + attention)",
        roles=roles))
    record = {
        "effect": _grid(np.abs(found.mean_effect("patch")), 3),
        "description": "effect: [layer][head] |mean change of logit(IO) - logit(S)| when the head's output is "
                       "patched from the ABC counterfactual; patch/mean/zero: signed mean changes (negative: "
                       "the head raises the IO logit); attention_*: mean attention over the IOI prompts",
        "clean_mean_logit_diff": round(float(np.mean(found.clean)), 3),
        "patch": _grid(found.mean_effect("patch"), 3),
        "mean": _grid(found.mean_effect("mean"), 3),
        "zero": _grid(found.mean_effect("zero"), 3),
        **{f"attention_{k}": _grid(v, 3) for k, v in found.scores.items()},
        "roles": {r: [f"{l}.{h}" for l, h in heads] for r, heads in roles.items()},
        "joint_mean_ablation": joint,
        "thresholds": {"role_score": ROLE_SCORE, "effect_share": EFFECT_SHARE},
        "prompts": {"seed": IDENTIFY_SEED, "n": n_prompts,
                    "templates": "held-out, the posts' and the generator's (none trained on); all names"},
    }
    body = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items())
    (directory / "identify.json").write_text("{\n" + body + "\n}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--n-prompts", type=int, default=512)
    args = parser.parse_args(argv)
    _, model = load_model(resolve(str(args.checkpoint)))
    found, pairs, means = identify(model, args.n_prompts)
    joint = joint_ablation(model, pairs.ioi, means, found.heads())
    write_circuit(args.checkpoint, found, joint, args.n_prompts)
    print(json.dumps({"roles": found.roles(), "joint": joint}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
