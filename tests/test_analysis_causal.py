"""Causal effects in the report (CONTRACT.md schema 2): per-head mean effects, the causal circuit and
`--circuit effects:K`, Spearman with a prompt-bootstrap interval, precision/recall of the flagged heads,
all on synthetic stores with planted effects (known truth)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import stats

from analysis.causal import CircuitRule, precision_recall
from analysis.circuits import load_circuit
from analysis.effects import effect_kinds, effect_sample
from analysis.errors import AnalysisError
from analysis.pipeline import run_analysis
from analysis.report import main, write_report
from analysis.synthetic import VARIABLES, make_dataset, write_store
from tests.jaxfree import run_without_jax

SHAPE = (4, 6)
N_PROMPTS = (40, 30)
# large and precise: the causal circuit, both signs
CAUSAL = {(3, 1): -3.0, (2, 4): -1.5, (1, 0): 1.0}
SMALL = {(0, 3): 0.3}  # significant (t about 38) but under the size cut 0.2 x 3.0 = 0.6
NOISY_HEAD, NOISY_MEAN = (2, 2), 0.9  # over the size cut but not significant (t about 1.1)


def planted_store(**kwargs):
    """A store whose causal circuit is exactly CAUSAL under the default rule, for every effect kind."""
    ds = make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=N_PROMPTS, conditions=("ioi", "random"),
                      effects=CAUSAL | SMALL, seed=5, **kwargs)
    n = N_PROMPTS[0]
    spread = 5.0 * np.where(np.arange(n) % 2 == 0, 1.0, -1.0)  # mean exactly NOISY_MEAN, SD 5
    for kind in effect_kinds(ds):
        ds[f"effect_{kind}"][0, :n, NOISY_HEAD[0], NOISY_HEAD[1]] = NOISY_MEAN + spread
    return ds


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal")
    ds = planted_store(shifts={"kl_norm": {(3, 1): 0.08, (0, 5): 0.07}})
    return root, ds, stored_report(ds, root, n_perm=200)


def stored_report(ds, root, **settings) -> dict:
    """Write ds as root/run.zarr and its report (circuit effects:patch unless settings say otherwise) into
    root/out; return the summary."""
    write_store(ds, root / "run.zarr")
    return write_report(str(root / "run.zarr"), str(root / "out"), **{"circuit": "effects:patch", "n_boot": 200,
                                                                        "seed": 1} | settings)


def test_causal_circuit_is_exactly_the_planted_heads(planted):
    _, ds, s = planted
    assert s["effects"] == ["zero", "mean", "patch"]
    for kind in s["effects"]:
        entry = s["causal"][kind]
        assert entry["circuit"] == [list(h) for h in sorted(CAUSAL)]
        mean = np.array(entry["mean"])
        assert abs(mean[NOISY_HEAD]) >= entry["threshold"] and entry["test"]["q_bh"][2][2] > 0.01  # large, not significant
        assert entry["test"]["q_bh"][0][3] <= 0.01 and abs(mean[0, 3]) < entry["threshold"]  # significant, small
    roles = s["circuit"]["roles"]
    assert roles == {"supports task (effect < 0)": [[2, 4], [3, 1]], "opposes task (effect > 0)": [[1, 0]]}
    circuit = load_circuit("effects:zero", store=ds, condition="ioi")
    assert circuit.heads == sorted(CAUSAL) and circuit.name == "effects:zero"


def test_mean_effects_recompute_from_the_store(planted):
    _, ds, s = planted
    n = N_PROMPTS[0]
    for kind in s["effects"]:
        values = ds[f"effect_{kind}"].values[0, :n].astype(np.float64)
        entry = s["causal"][kind]
        np.testing.assert_allclose(entry["mean"], values.mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(entry["test"]["p"], stats.ttest_1samp(values, 0.0, axis=0).pvalue, rtol=1e-9)
        assert entry["conditions"] == ["ioi"] and entry["n_prompts"] == n
        low, high = np.array(entry["ci"]["low"]), np.array(entry["ci"]["high"])
        assert np.all(low <= values.mean(axis=0)) and np.all(values.mean(axis=0) <= high)
        for head, true in CAUSAL.items():  # planted means are the truth
            assert low[head] < true < high[head]
    assert not [v for v in s["delta"] if v.startswith("effect_")]  # effects are not compared across conditions


def test_bca_interval_matches_scipy(planted):
    _, ds, _ = planted
    from analysis.causal import mean_effect
    from analysis.units import unit_moments

    values = effect_sample(ds, "mean", prefer="ioi").values
    units = unit_moments(values.values.reshape(values.shape[0], -1), 1)
    an_ci = mean_effect(units, values.shape[0], values.isel(prompt=0, drop=True), 4000,
                        np.random.default_rng(0)).confidence_interval
    x = values.values[:, 3, 1]
    ref = stats.bootstrap((x,), np.mean, n_resamples=4000, method="BCa", rng=np.random.default_rng(1)).confidence_interval
    width = ref.high - ref.low
    assert abs(float(an_ci.low[3, 1]) - ref.low) < 0.1 * width and abs(float(an_ci.high[3, 1]) - ref.high) < 0.1 * width


def test_report_files_and_words(planted):
    root, _, s = planted
    out = root / "out"
    assert (out / "fig9_causal_effects.png").read_bytes()[:4] == b"\x89PNG"
    assert s["circuit"]["name"] == "effects:patch" and s["circuit"]["heads"] == [list(h) for h in sorted(CAUSAL)]
    assert json.loads((out / "summary.json").read_text()) == s
    md = (out / "report.md").read_text()
    section = md[md.index("## Causal effects"):md.index("## Figures")]
    for phrase in ("two-sided", "one-sample t-test", "Benjamini-Hochberg q <= 0.01", "0.2 x the largest",
                   "Spearman", "precision", "recall", "effect_patch", "BCa"):
        assert phrase in section
    assert "fig9_causal_effects.png" in md


def test_cli_circuit_effects(planted, capsys):
    root, _, _ = planted
    assert main([str(root / "run.zarr"), "--out", str(root / "cli"), "--circuit", "effects:mean",
                 "--n-boot", "50", "--n-perm", "50"]) == 0
    s = json.loads((root / "cli" / "summary.json").read_text())
    assert s["circuit"]["name"] == "effects:mean" and s["circuit"]["heads"] == [list(h) for h in sorted(CAUSAL)]


def test_spearman_interval_contains_the_planted_value(tmp_path):
    """|delta kl_norm| and |mean effect| planted on every head with signs mixed (a signed correlation would
    differ): a monotone relation on 12 heads, a fixed scramble on the other 12, so the true rho is known."""
    n_heads = SHAPE[0] * SHAPE[1]
    rng = np.random.default_rng(7)
    abs_delta = 0.02 * (1 + np.arange(n_heads))
    abs_effect = abs_delta.copy() * 10
    abs_effect[12:] = rng.permutation(abs_effect[12:])
    signs_d, signs_e = rng.choice([-1, 1], n_heads), rng.choice([-1, 1], n_heads)
    heads = [(i // SHAPE[1], i % SHAPE[1]) for i in range(n_heads)]
    true_rho = stats.spearmanr(abs_delta, abs_effect).statistic
    assert 0.3 < true_rho < 0.95
    ds = make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=N_PROMPTS, noise=0.03,
                      shifts={"kl_norm": {h: s * d for h, s, d in zip(heads, signs_d, abs_delta)}},
                      effects={h: s * e for h, s, e in zip(heads, signs_e, abs_effect)}, effect_noise=0.4,
                      effect_kinds=("patch",), seed=3)
    an = run_analysis(ds, load_circuit("effects:patch", store=ds, condition="ioi"), "ioi", "non_ioi", n_boot=500,
                      n_perm=20, seed=0, curve=False)
    sp = an.causal["patch"].spearman["kl_norm"]
    assert sp.confidence_interval.low <= true_rho <= sp.confidence_interval.high
    assert sp.confidence_interval.high - sp.confidence_interval.low > 0.01  # a real interval, not a point
    expected = stats.spearmanr(np.abs(an.delta("kl_norm").values.ravel()),
                               np.abs(an.causal["patch"].mean.statistic.values.ravel())).statistic
    assert sp.statistic == pytest.approx(expected) and sp.n == n_heads


def test_precision_recall_of_flagged_heads(tmp_path):
    """Diagnostics flag 3.1, 0.5 and 2.4 (planted shifts); the causal circuit is 3.1, 2.4, 1.0: 2 of 3 each way."""
    flagged = {(3, 1): 0.12, (0, 5): 0.12, (2, 4): -0.12}
    ds = planted_store(shifts={"kl_norm": flagged}, effect_kinds=("zero",))
    write_store(ds, tmp_path / "s.zarr")
    s = write_report(str(tmp_path / "s.zarr"), str(tmp_path / "out"), circuit="effects:zero", n_boot=50,
                     n_perm=1000, seed=2)
    entry = s["causal"]["zero"]
    assert entry["flagged"]["kl_norm"] == [list(h) for h in sorted(flagged)]
    assert entry["flagged"]["kl_norm"] == s["min_effect_tests"]["kl_norm"]["flagged"]  # the report's own flags
    assert entry["precision"]["kl_norm"] == pytest.approx(2 / 3) and entry["recall"]["kl_norm"] == pytest.approx(2 / 3)


def test_precision_recall_edge_cases():
    assert precision_recall([(0, 1), (1, 1), (2, 2)], [(1, 1), (2, 2), (3, 3), (4, 4)]) == (2 / 3, 0.5)
    p, r = precision_recall([], [(1, 1)])
    assert np.isnan(p) and r == 0.0
    p, r = precision_recall([(1, 1)], [])
    assert p == 0.0 and np.isnan(r)


def test_condition_without_targets_falls_back_to_those_with_them(planted):
    _, ds, _ = planted
    sample = effect_sample(ds, "patch", prefer="random")
    assert sample.conditions == ("ioi",) and sample.n_prompts == N_PROMPTS[0]
    an = run_analysis(ds, load_circuit("effects:patch", store=ds, condition="random"), "random", "ioi", n_boot=50,
                      n_perm=20, seed=0, curve=False)
    assert an.causal["patch"].conditions == ("ioi",) and an.causal["patch"].circuit == sorted(CAUSAL)
    assert np.isfinite(an.causal["patch"].spearman["kl_norm"].confidence_interval.low)


@pytest.fixture(scope="module")
def error_stores(tmp_path_factory):
    root = tmp_path_factory.mktemp("causal-bad")
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, seed=1), root / "none.zarr")
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, seed=1, effects={(1, 1): -1.0},
                             effect_kinds=("zero",)), root / "zero.zarr")
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, seed=1, effects={}, effect_kinds=("patch",)),
                root / "flat.zarr")
    return root


@pytest.mark.parametrize("store, circuit, message", [
    ("none.zarr", "effects:patch", "store has no causal effects of kind 'patch' (variable effect_patch); it has none"),
    ("zero.zarr", "effects:patch", "store has no causal effects of kind 'patch' (variable effect_patch); it has zero"),
    ("flat.zarr", "effects:patch", "causal circuit 'effects:patch' is empty"),
])
def test_missing_kind_or_empty_circuit_is_one_line_error(error_stores, capsys, store, circuit, message):
    out = error_stores / "out"
    assert main([str(error_stores / store), "--out", str(out), "--circuit", circuit, "--n-boot", "20",
                 "--n-perm", "20"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()
    with pytest.raises(AnalysisError):
        load_circuit(circuit, store=__import__("analysis.store", fromlist=["open_store"]).open_store(
            error_stores / store))
    with pytest.raises(AnalysisError, match="no store was given"):
        load_circuit(circuit)


def test_planting_effects_leaves_the_diagnostics_and_defaults_alone():
    plain = make_dataset(n_layers=2, n_heads=3, n_prompts=(12, 10), seed=4)
    with_effects = make_dataset(n_layers=2, n_heads=3, n_prompts=(12, 10), seed=4, effects={(1, 2): -1.0})
    for v in VARIABLES:
        np.testing.assert_array_equal(plain[v].values, with_effects[v].values)
    assert "effects" not in plain.attrs and "metric" not in plain and effect_kinds(plain) == []
    assert not any(v.startswith("effect_") for v in plain.data_vars) and "target" not in plain.coords
    metric = with_effects["metric"].values
    assert np.isfinite(metric[0, :12]).all() and np.isnan(metric[0, 12:]).all() and np.isnan(metric[1]).all()
    for kind in ("zero", "mean", "patch"):
        effect = with_effects[f"effect_{kind}"].values
        assert (np.isnan(effect) == np.isnan(metric)[:, :, None, None]).all()
    assert with_effects.attrs["effects"] == ["zero", "mean", "patch"]
    assert with_effects.attrs["effects_reference"] == "non_ioi" and with_effects["head_mean"].dims == ("layer", "head", "d_head")
    assert (with_effects["target"].values[1] == -1).all() and (with_effects["pair"].values == "").all()


def test_default_rule_is_stated():
    rule = CircuitRule()
    assert (rule.level, rule.fraction) == (0.01, 0.2)
    assert "two-sided" in rule.text() and "0.01" in rule.text() and "0.2 x" in rule.text()


def test_effects_report_runs_without_jax(tmp_path):
    run_without_jax(f"""
        from analysis.synthetic import make_dataset, write_store
        from analysis.report import write_report
        write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, effects={{(1, 1): -1.0}}), r"{tmp_path}/s.zarr")
        s = write_report(r"{tmp_path}/s.zarr", r"{tmp_path}/out", circuit="effects:patch", n_boot=20, n_perm=20)
        assert s["circuit"]["heads"] == [[1, 1]], s["circuit"]
    """)
