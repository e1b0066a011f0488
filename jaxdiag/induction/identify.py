"""Find the induction circuit's heads without the attention diagnostics, and write the circuit file.

    python -m jaxdiag.induction.identify jaxdiag/data/induction-3l8h

Two independent kinds of evidence, both from the model's own forward pass:

- attention: on prompts with a copied segment, how much a query at a repeated token attends to the
  token *after* its earlier occurrence (induction score) or to the earlier occurrence itself
  (duplicate-token score); on random prompts, how much each query attends to the token before it
  (previous-token score);
- ablation: how much copying accuracy drops when the head alone is mean-ablated (and zero-ablated).

A head gets a role when its attention score for that role is at least ``ROLE_SCORE`` and it is
causal for copying: either its own causal effect (the larger of the copying accuracy lost when it
alone is mean-ablated and the accuracy it restores alone while the rest of its role group is
mean-ablated) is at least ``ROLE_DROP``, or its role group as a whole is causal (mean-ablating
all the group's candidates costs at least ``ROLE_DROP``) and its own effect is positive. The group
test exists because redundant heads each matter little alone although together they are the
circuit: the shipped model spreads induction over all eight heads of layer 1 (d_head = 8, so no
single head's output can carry a token's identity). The circuit file (TOML, the format ``jaxdiag report
--circuit`` reads) lists heads by role and points to ``ablation.json``, the per-head drops.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from jaxdiag.circuits import circuit_toml
from jaxdiag.checkpoint import resolve
from jaxdiag.models.load import load_model
from jaxdiag.induction.ablation import ablated_accuracy, mean_head_outputs, per_head_drops
from jaxdiag.induction.data import CopyingSet, copying_set, random_set
from jaxdiag.induction.metrics import attention_patterns
from jaxdiag.models.gpt2 import GPT2

ROLE_SCORE = 0.3  # mean attention on the role's target position
ROLE_DROP = 0.05  # copying-accuracy drop (fraction) when the head alone is mean-ablated
FIXED_OFFSET_LIMIT = 0.3  # see fixed_offset_attention
ROLES = ("Induction", "Previous Token", "Duplicate Token")

# Seeds of the identification prompts: disjoint from training (a separate generator) and from the
# accuracy evaluation in train.py.
COPY_SEED, RANDOM_SEED, MEAN_SEED = 2024, 2025, 2026


def induction_scores(patterns: np.ndarray, data: CopyingSet) -> tuple[np.ndarray, np.ndarray]:
    """``(induction, duplicate)`` scores ``[layer, head]`` from ``patterns [n, layer, head, q, k]``.

    For each repeated token at ``dst + i`` (its earlier occurrence at ``src + i``): induction is the
    attention to ``src + i + 1``, duplicate-token the attention to ``src + i``; means over all.
    """
    induction, duplicate = [], []
    for p, copy in enumerate(data.copies):
        q = np.arange(copy.dst, copy.dst + copy.seg_len)
        q = q[q < patterns.shape[-2]]
        earlier = q - copy.period
        induction.append(patterns[p][..., q, earlier + 1])
        duplicate.append(patterns[p][..., q, earlier])
    return np.concatenate(induction, -1).mean(-1), np.concatenate(duplicate, -1).mean(-1)


def offset_attention(patterns: np.ndarray, max_offset: int | None = None) -> np.ndarray:
    """``[layer, head, offset]``: mean attention from query ``t`` to key ``t - offset``, over prompts
    and over every query that can see that far back (``t >= offset``; offset 0 is the token itself)."""
    n_q = patterns.shape[-2]
    max_offset = n_q - 1 if max_offset is None else max_offset
    out = np.empty(patterns.shape[1:3] + (max_offset + 1,))
    for k in range(max_offset + 1):
        q = np.arange(k, n_q)
        out[..., k] = patterns[..., q, q - k].mean(axis=(0, -1))
    return out


def fixed_offset_attention(random_patterns: np.ndarray) -> np.ndarray:
    """``[layer, head]``: the largest mean attention any head pays to one fixed offset ``>= 2`` on random prompts.

    Offsets 0 (self) and 1 (previous token) are excluded: they are the legitimate positional parts
    of an induction circuit. A large value at a longer offset would mean the model copies by a
    positional shortcut (attend ``P - 1`` back for a memorised period ``P``), not by induction.
    Queries must be able to see the offset (``t >= offset``).
    """
    return offset_attention(random_patterns)[..., 2:].max(axis=-1)


@dataclasses.dataclass
class Identification:
    baseline_accuracy: float
    induction_score: np.ndarray
    duplicate_score: np.ndarray
    previous_token_score: np.ndarray
    fixed_offset: np.ndarray
    mean_drop: np.ndarray
    zero_drop: np.ndarray
    restore_gain: np.ndarray  # accuracy a candidate restores alone within its ablated role group
    group_drop: dict[str, float]  # accuracy lost when each role's candidates are ablated together

    def scores(self) -> dict[str, np.ndarray]:
        return {"Induction": self.induction_score, "Previous Token": self.previous_token_score,
                "Duplicate Token": self.duplicate_score}

    def causal_effect(self) -> np.ndarray:
        """``[layer, head]``: the larger of the alone-ablated drop and the within-group restoration."""
        return np.maximum(self.mean_drop, self.restore_gain)

    def roles(self) -> dict[str, list[tuple[int, int]]]:
        candidates = role_candidates(self.scores())
        effect = self.causal_effect()
        out = {}
        for role, heads in candidates.items():
            group_causal = self.group_drop.get(role, 0.0) >= ROLE_DROP
            kept = [head for head in heads if effect[head] >= ROLE_DROP or (group_causal and effect[head] > 0)]
            if kept:
                out[role] = kept
        return out


def role_candidates(scores: dict[str, np.ndarray]) -> dict[str, list[tuple[int, int]]]:
    """Heads whose attention score for a role reaches ``ROLE_SCORE`` (a head strong on two roles
    keeps the one it scores higher on)."""
    out = {}
    for role in ROLES:
        chosen = np.argwhere(scores[role] >= ROLE_SCORE)
        heads = [(int(l), int(h)) for l, h in chosen if max(ROLES, key=lambda r: scores[r][l, h]) == role]
        if heads:
            out[role] = heads
    return out


def restoration_gains(model: GPT2, data: CopyingSet, candidates: dict[str, list[tuple[int, int]]],
                      means: np.ndarray, baseline: float) -> tuple[np.ndarray, dict[str, float]]:
    """Per head ``[layer, head]``: copying accuracy with all of a role's candidates mean-ablated but
    this one, minus accuracy with all of them ablated (0 for heads that are no candidate); and per
    role, the accuracy lost when all its candidates are mean-ablated together."""
    n_layer, n_head = means.shape[:2]
    gains = np.zeros((n_layer, n_head))
    group_drop = {}
    for role, heads in candidates.items():
        floor = ablated_accuracy(model, data, heads, "mean", means)
        group_drop[role] = round(baseline - floor, 4)
        for head in heads:
            others = [h for h in heads if h != head]
            gains[head] = ablated_accuracy(model, data, others, "mean", means) - floor
    return gains, group_drop


def identify(model: GPT2, *, n_prompts: int = 256, progress: bool = False) -> Identification:
    """Score every head by attention and by ablation on fixed held-out prompts."""
    n_tokens = model.config.n_positions + 1  # copying sets carry the last target token too
    vocab = model.config.vocab_size
    copies = copying_set(COPY_SEED, n_prompts, n_tokens, vocab)
    random_tokens = random_set(RANDOM_SEED, n_prompts, n_tokens - 1, vocab)
    copy_patterns = attention_patterns(model, copies.tokens[:, :-1])
    random_patterns = attention_patterns(model, random_tokens)
    induction, duplicate = induction_scores(copy_patterns, copies)
    means = mean_head_outputs(model, random_set(MEAN_SEED, 64, n_tokens - 1, vocab))
    baseline, mean_drop = per_head_drops(model, copies, "mean", means, progress=progress)
    _, zero_drop = per_head_drops(model, copies, "zero", progress=progress)
    previous_token = offset_attention(random_patterns, 1)[..., 1]
    candidates = role_candidates(
        {"Induction": induction, "Previous Token": previous_token, "Duplicate Token": duplicate}
    )
    restore_gain, group_drop = restoration_gains(model, copies, candidates, means, baseline)
    return Identification(
        baseline_accuracy=baseline,
        induction_score=induction,
        duplicate_score=duplicate,
        previous_token_score=previous_token,
        fixed_offset=fixed_offset_attention(random_patterns),
        mean_drop=mean_drop,
        zero_drop=zero_drop,
        restore_gain=restore_gain,
        group_drop=group_drop,
    )


def _grid(a: np.ndarray, digits: int = 4) -> list[list[float]]:
    return np.round(a.astype(float), digits).tolist()


def write_circuit(directory: Path, found: Identification, joint: dict[str, float]) -> None:
    """``circuit.toml`` (roles, for ``jaxdiag report``) and ``ablation.json`` (per-head effects)."""
    n_layers, n_heads = found.mean_drop.shape
    roles = found.roles()
    comments = [
        "Heads of the shipped induction model's circuit, found WITHOUT the attention diagnostics:",
        f"a role needs attention score >= {ROLE_SCORE} on the role's target and a causal effect on copying",
        f">= {ROLE_DROP} (the drop when the head alone is mean-ablated, or the accuracy it restores alone",
        "while the rest of its role group is mean-ablated), or a positive effect within a role group whose",
        f"joint mean-ablation costs >= {ROLE_DROP} (python -m jaxdiag.induction.identify).",
    ]
    (directory / "circuit.toml").write_text(circuit_toml(
        comments, name=directory.name, n_layers=n_layers, n_heads=n_heads, ablation="ablation.json",
        description=f"Induction circuit of jaxdiag's shipped {n_layers}x{n_heads} GPT-2 (identified by attention + ablation)",
        roles=roles))
    record = {
        "effect": _grid(found.causal_effect()),
        "description": "[layer][head] causal effect on copying accuracy (fraction of copyable tokens): the larger "
                       "of 'mean_ablation' (drop when the head alone is mean-ablated) and 'restoration' (accuracy "
                       "the head restores alone while the rest of its role group is mean-ablated); "
                       "'zero_ablation' is the drop under zero-ablation",
        "mean_ablation": _grid(found.mean_drop),
        "restoration": _grid(found.restore_gain),
        "baseline_copying_accuracy": round(found.baseline_accuracy, 4),
        "zero_ablation": _grid(found.zero_drop),
        "induction_score": _grid(found.induction_score),
        "duplicate_token_score": _grid(found.duplicate_score),
        "previous_token_score": _grid(found.previous_token_score),
        "max_fixed_offset_attention_random": _grid(found.fixed_offset),
        "joint_ablation_accuracy": joint,
        "candidate_group_drop": found.group_drop,
        "thresholds": {"role_score": ROLE_SCORE, "role_drop": ROLE_DROP},
        "prompts": {"copy_seed": COPY_SEED, "random_seed": RANDOM_SEED, "mean_seed": MEAN_SEED},
    }
    # one key per line, each [layer][head] grid on its line: diff-able and readable
    body = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in record.items())
    (directory / "ablation.json").write_text("{\n" + body + "\n}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint", type=Path)
    args = parser.parse_args(argv)
    _, model = load_model(resolve(str(args.checkpoint)))
    found = identify(model, progress=True)
    roles = found.roles()
    n_tokens = model.config.n_positions + 1
    copies = copying_set(COPY_SEED, 256, n_tokens, model.config.vocab_size)
    means = mean_head_outputs(model, random_set(MEAN_SEED, 64, n_tokens - 1, model.config.vocab_size))
    joint = {
        f"{role} ({method})": round(ablated_accuracy(model, copies, heads, method, means), 4)
        for role, heads in roles.items() for method in ("mean", "zero")
    }
    write_circuit(args.checkpoint, found, joint)
    print(json.dumps({"baseline": found.baseline_accuracy, "roles": roles, "joint": joint}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
