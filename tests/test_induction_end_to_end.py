"""End to end on the offline default: `jaxdiag run` + `jaxdiag report` on the shipped induction model
recover its circuit from the attention diagnostics alone.

The circuit file the report uses was written WITHOUT the diagnostics (by attention and ablation,
jaxdiag.induction.identify); here the diagnostics have to find the same heads on their own.
"""

from __future__ import annotations

import json
import tomllib

import numpy as np
import pytest

from jaxdiag.induction import CHECKPOINT_DIR

pytestmark = pytest.mark.skipif(not (CHECKPOINT_DIR / "circuit.toml").is_file(), reason="no shipped checkpoint")

# With 24 heads, BH at 1% needs a permutation p of at most 0.01 * rank / 24: with one head at the
# floor 1 / (n_perm + 1) that means n_perm >= 2400.
N_PERM = 4999


@pytest.fixture(scope="module")
def summary(tmp_path_factory) -> dict:
    from jaxdiag.cli import main

    work = tmp_path_factory.mktemp("default")
    store, report = work / "default.zarr", work / "report"
    assert main(["run", "--preset", "default", "--out", str(store), "--quiet"]) == 0
    assert main(["report", str(store), "--out", str(report), "--n-perm", str(N_PERM), "--n-boot", "200"]) == 0
    return json.loads((report / "summary.json").read_text())


@pytest.fixture(scope="module")
def induction_heads() -> list[tuple[int, int]]:
    roles = tomllib.loads((CHECKPOINT_DIR / "circuit.toml").read_text())["roles"]
    return [tuple(int(x) for x in h.split(".")) for h in roles["Induction"]]


def test_report_compares_repeated_with_random_on_the_shipped_circuit(summary):
    assert summary["conditions"] == {"a": "repeated", "b": "random"}
    assert summary["circuit"]["name"] == "induction-3l8h"


# A head "matters for copying" when removing it changes copying accuracy by at least 0.1 points
# (about 4 of the ~4,000 scored targets); the inert layer-2 heads move it by at most 0.04 points.
MEASURABLE_EFFECT = 0.001


@pytest.fixture(scope="module")
def ablation_effect() -> np.ndarray:
    return np.asarray(json.loads((CHECKPOINT_DIR / "ablation.json").read_text())["effect"], dtype=float)


@pytest.mark.xfail(strict=True, reason=(
    "measured: the largest |delta kl_norm| belongs to a layer-2 head whose ablation changes copying "
    "by under 0.1 points: causally inert heads can shift their attention most"
))
def test_largest_kl_norm_shift_is_an_induction_head(summary, induction_heads):
    delta = np.abs(np.asarray(summary["delta"]["kl_norm"], dtype=float))
    top = tuple(int(i) for i in np.unravel_index(np.nanargmax(delta), delta.shape))
    assert top in induction_heads, f"largest |delta kl_norm| at {top}, induction heads {induction_heads}"


def test_largest_shift_among_causal_heads_is_an_induction_head(summary, induction_heads, ablation_effect):
    """Restricted to heads that matter for copying at all, the diagnostics point at induction."""
    delta = np.abs(np.asarray(summary["delta"]["kl_norm"], dtype=float))
    assert delta.shape == ablation_effect.shape == (3, 8)
    causal = np.where(ablation_effect >= MEASURABLE_EFFECT, delta, -np.inf)
    top = tuple(int(i) for i in np.unravel_index(np.argmax(causal), delta.shape))
    assert top in induction_heads, f"largest causal |delta kl_norm| at {top}, induction heads {induction_heads}"


def test_heads_shifting_more_than_induction_heads_are_causally_inert(summary, induction_heads, ablation_effect):
    """Every head that out-shifts the strongest induction head has no measurable effect on copying."""
    delta = np.abs(np.asarray(summary["delta"]["kl_norm"], dtype=float))
    strongest_induction = max(delta[head] for head in induction_heads)
    above = np.argwhere(delta > strongest_induction)
    assert above.size and all(ablation_effect[tuple(head)] < MEASURABLE_EFFECT for head in above), above


def test_induction_heads_survive_benjamini_hochberg_at_1_percent(summary, induction_heads):
    per_head = summary["per_head"]["kl_norm"]
    q = np.asarray(per_head["q_bh"], dtype=float)
    for layer, head in induction_heads:
        assert q[layer, head] <= 0.01, f"head {layer}.{head}: BH q = {q[layer, head]}"
        assert [layer, head] in per_head["bh_0.01"]
