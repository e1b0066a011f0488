"""The IOI metric (logit(IO) - logit(S) at the last token) on held-out sets, with or without head edits.

Evaluated through :class:`jaxdiag.models.gpt2.GPT2` without the diagnostics probe, so nothing here depends
on the attention diagnostics the sweep computes.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxdiag.models.edits import HeadEdit
from jaxdiag.ioi import data
from jaxdiag.models.gpt2 import GPT2
from jaxdiag.sweep.prompts import BLOG_ABBA, IOI_ABBA, Prompt, ioi_blog_prompts, ioi_prompts

EVAL_SEED = 12345  # evaluation draws; fixed, independent of the training seed
BATCH = 128


@dataclasses.dataclass(frozen=True)
class TaskSet:
    """Right-padded prompts (BOS included) and their IO (``target``) and S (``foil``) token ids."""

    tokens: np.ndarray  # [n, seq] int32
    lengths: np.ndarray  # [n] int32
    target: np.ndarray  # [n] int32
    foil: np.ndarray  # [n] int32

    def __len__(self) -> int:
        return len(self.lengths)

    @classmethod
    def from_examples(cls, examples: Sequence[data.Example], n_positions: int = data.N_POSITIONS) -> "TaskSet":
        tokens, lengths, targets = data.encode_batch(examples, n_positions)
        return cls(tokens, lengths, targets[:, 0].copy(), np.array([e.foil for e in examples], dtype=np.int32))

    @classmethod
    def from_prompts(cls, prompts: Sequence[Prompt], n_positions: int = data.N_POSITIONS) -> "TaskSet":
        """IOI prompts of a prompt source (those with a target), padded with BOS."""
        prompts = [p for p in prompts if p.target >= 0]
        tokens = np.full((len(prompts), n_positions), data.BOS_ID, dtype=np.int32)
        for i, p in enumerate(prompts):
            tokens[i, :len(p.tokens)] = p.tokens
        return cls(tokens, np.array([len(p.tokens) for p in prompts], dtype=np.int32),
                   np.array([p.target for p in prompts], dtype=np.int32), np.array([p.foil for p in prompts], dtype=np.int32))


def compile_logit_diff(model: GPT2) -> Callable[..., np.ndarray]:
    """A jitted ``(TaskSet, edit=None) -> [n]`` logit(IO) - logit(S) at each prompt's last token."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def run(state, tokens, lengths, target, foil, edit):
        m = nnx.merge(graphdef, state)
        hidden = m(tokens, lengths, edit=edit).hidden
        last = jnp.take_along_axis(hidden, (lengths - 1)[:, None, None], axis=1)[:, 0]
        wte = m.wte.embedding[...]
        return jnp.einsum("be,be->b", last, wte[target] - wte[foil], preferred_element_type=jnp.float32)

    def logit_diff(task: TaskSet, edit: HeadEdit | None = None) -> np.ndarray:
        out = []
        for i in range(0, len(task), BATCH):
            sl = slice(i, i + BATCH)
            n = len(task.lengths[sl])
            pad = lambda a: np.concatenate([a, np.repeat(a[-1:], BATCH - n, axis=0)]) if n < BATCH else a
            out.append(np.asarray(run(state, *(pad(a[sl]) for a in (task.tokens, task.lengths, task.target, task.foil)),
                                      edit))[:n])
        return np.concatenate(out)

    return logit_diff


def summarise(diff: np.ndarray) -> dict[str, float]:
    """Share of prompts with a positive logit difference, its mean and 5th percentile."""
    return {"n": int(diff.size), "positive": round(float(np.mean(diff > 0)), 4), "mean": round(float(np.mean(diff)), 3),
            "p05": round(float(np.percentile(diff, 5)), 3)}


def heldout_set(n: int = 1200, seed: int = EVAL_SEED) -> list[data.Example]:
    """What the model is for: held-out templates x held-out fillers x names never in an IOI training
    prompt, every template equally often, ABBA and BABA balanced within each."""
    return data.evaluation_set(data.HELDOUT_TEMPLATES, data.HELDOUT_NAMES, n, seed,
                               data.HELDOUT_PLACES, data.HELDOUT_OBJECTS)


def evaluation_sets(n: int = 1000) -> dict[str, TaskSet]:
    """The held-out sets the training record and tests report.

    - ``heldout``: :func:`heldout_set` (``n`` rounded up to a whole number of templates x 2);
    - ``heldout_templates_train_names``: held-out templates and fillers, names of IOI training prompts;
    - ``posts_generator_templates_heldout_names``: the posts' and the generator's templates (not in
      the training grammar), their fillers, held-out names;
    - ``ioi_blog``: the posts' 50 IOI prompts; ``ioi_generator``: the ``ioi`` source's IOI prompts.
    """
    tok = data.tokenizer()
    per = 2 * len(data.HELDOUT_TEMPLATES)
    return {
        "heldout": TaskSet.from_examples(heldout_set(-(-n // per) * per)),
        "heldout_templates_train_names": TaskSet.from_examples(data.evaluation_set(
            data.HELDOUT_TEMPLATES, data.TRAIN_NAMES, n, EVAL_SEED + 1, data.HELDOUT_PLACES, data.HELDOUT_OBJECTS)),
        "posts_generator_templates_heldout_names": TaskSet.from_examples(
            data.evaluation_set(BLOG_ABBA + IOI_ABBA, data.HELDOUT_NAMES, n, EVAL_SEED + 2)),
        "ioi_blog": TaskSet.from_prompts(list(ioi_blog_prompts(tok.encode))),
        "ioi_generator": TaskSet.from_prompts([p for p in ioi_prompts(tok.encode, n_prompts=n, n_tokens=15, seed=0)
                                               if p.condition == "ioi"]),
    }


def per_template(model: GPT2, n: int = 1200, edit: HeadEdit | None = None) -> list[dict]:
    """:func:`summarise` of :func:`heldout_set` per template (ABBA and BABA apart as well)."""
    examples = heldout_set(n)
    diff = compile_logit_diff(model)(TaskSet.from_examples(examples), edit)
    template = np.array([e.template for e in examples])
    abba = np.arange(len(examples)) % 2 == 0
    return [{"template": t, **summarise(diff[template == k]),
             "abba": summarise(diff[(template == k) & abba])["positive"],
             "baba": summarise(diff[(template == k) & ~abba])["positive"]}
            for k, t in enumerate(data.HELDOUT_TEMPLATES)]


def evaluate(model: GPT2, n: int = 1000, edit: HeadEdit | None = None) -> dict[str, dict[str, float]]:
    """:func:`summarise` of the logit difference on every :func:`evaluation_sets` set."""
    logit_diff = compile_logit_diff(model)
    return {name: summarise(logit_diff(task, edit)) for name, task in evaluation_sets(n).items()}
