"""End-to-end `write_report` on synthetic Zarr stores: every summary.json number recomputed from the
store with plain numpy/scipy, strict JSON, defaults, one-line errors, and no JAX anywhere."""

from __future__ import annotations

import json
from contextlib import nullcontext

import numpy as np
import pytest
import xarray as xr
from scipy import stats

from analysis.errors import AnalysisError
from analysis.report import main, write_report
from analysis.synthetic import make_dataset, write_store
from tests.jaxfree import run_without_jax

SHAPE = (4, 6)
PLANTED = {(3, 1): 0.06, (2, 4): -0.05}
CIRCUIT_TOML = """
name = "toy"
ablation = "ablation.json"
[roles]
"Mover" = ["3.1", "2.4"]
"Previous Token" = [[0, 2]]
"""


def strict_json(text: str):
    def no_constant(name):
        raise ValueError(f"non-strict JSON constant {name}")

    return json.loads(text, parse_constant=no_constant)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    ds = make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=(40, 30), conditions=("repeated", "random"),
                      shifts={"kl_norm": PLANTED, "chi": {(3, 1): 0.03}}, couplings={((1, 0), (3, 1)): 0.9},
                      seed=5, circuit="toy.toml")
    ds["kl"][:, :, 0, 5] = np.nan  # a head undefined everywhere: its numbers must come out as null
    write_store(ds, root / "run.zarr")
    (root / "toy.toml").write_text(CIRCUIT_TOML)  # found beside the store, as the run config names it
    ablation = np.zeros(SHAPE)
    ablation[3, 1], ablation[0, 2], ablation[2, 4] = 0.6, 0.4, 0.2
    (root / "ablation.json").write_text(json.dumps({"effect": ablation.tolist()}))
    summary = write_report(str(root / "run.zarr"), str(root / "out"), n_boot=300, n_perm=300, seed=1)
    return root, summary, ablation


def test_files_written_and_json_strict(report):
    root, summary, _ = report
    out = root / "out"
    names = {p.name for p in out.iterdir()}
    for fig in ("fig1_one_head", "fig2_circuit_heads", "fig3_noncircuit_heads", "fig4_delta_distributions",
                "fig5_correlation_matrices", "fig6_ca_vs_cb", "fig7_prompt_count", "fig8_c_diff_clustered"):
        assert {f"{fig}.png", f"{fig}.svg"} <= names
        assert (out / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    assert not [n for n in names if n.startswith(".report-")]
    on_disk = strict_json((out / "summary.json").read_text())
    assert on_disk == summary
    assert summary["delta"]["kl"][0][5] is None and summary["delta_ci"]["kl"]["low"][0][5] is None
    md = (out / "report.md").read_text()
    for phrase in ("one-sided", "two-sided", "Mann-Whitney", "Permutation", "Layer-stratified", "Benjamini",
                   "Spearman", "5 sigma", "prompt count"):
        assert phrase in md


def test_defaults_come_from_the_run_config(report):
    _, s, _ = report
    assert s["conditions"] == {"a": "repeated", "b": "random"}
    assert s["n_prompts"] == {"repeated": 40, "random": 30}
    assert s["circuit"]["name"] == "toy" and s["circuit"]["heads"] == [[0, 2], [2, 4], [3, 1]]


def test_every_number_recomputes_from_the_store(report):
    root, s, ablation = report
    ds = xr.open_zarr(root / "run.zarr")
    x = {v: (ds[v].sel(condition="repeated").values[:40].astype(float),
             ds[v].sel(condition="random").values[:30].astype(float)) for v in ds.data_vars}
    for v, (xa, xb) in x.items():
        with np.errstate(invalid="ignore"), pytest.warns(RuntimeWarning) if v == "kl" else nullcontext():
            delta = np.nanmean(xa, 0) - np.nanmean(xb, 0)  # kl has an all-NaN head
        np.testing.assert_allclose(np.array(s["delta"][v], dtype=float), delta, rtol=1e-12, atol=1e-12)
    mask = np.zeros(SHAPE, bool)
    mask[0, 2] = mask[2, 4] = mask[3, 1] = True
    ranks_kl = None
    for v in ("kl_norm", "chi"):
        xa, xb = x[v]
        absd = np.abs(xa.mean(0) - xb.mean(0))
        ref = stats.mannwhitneyu(absd[mask], absd[~mask], alternative="greater")
        mw = s["mannwhitney"][v]
        assert mw["U"] == ref.statistic and mw["p"] == pytest.approx(ref.pvalue, rel=1e-12)
        assert mw["auc"] == pytest.approx(ref.statistic / (3 * 21))
        assert mw["auc_ci"][0] <= mw["auc"] <= mw["auc_ci"][1]
        assert mw["min_attainable_p"] == pytest.approx(1 / 2024)
        # bootstrap CIs: bracket delta, width ~ 2 * 1.96 * analytic standard error
        low, high = (np.array(s["delta_ci"][v][k], dtype=float) for k in ("low", "high"))
        se = np.sqrt(xa.var(0, ddof=1) / 40 + xb.var(0, ddof=1) / 30)
        assert np.mean((low <= xa.mean(0) - xb.mean(0)) & (xa.mean(0) - xb.mean(0) <= high)) == 1
        np.testing.assert_allclose(np.median((high - low) / (2 * 1.96 * se)), 1.0, atol=0.15)
        # Monte-Carlo p-values live on the grid k / (n_perm + 1) and BH q follows from p
        p = np.array(s["per_head"][v]["p"], dtype=float)
        np.testing.assert_allclose(p * 301, np.round(p * 301), atol=1e-9)
        order = np.argsort(p.ravel())
        scaled = p.ravel()[order] * p.size / np.arange(1, p.size + 1)
        q = np.minimum.accumulate(scaled[::-1])[::-1]
        np.testing.assert_allclose(np.array(s["per_head"][v]["q_bh"], dtype=float).ravel()[order], np.minimum(q, 1))
        assert 1 / 301 <= s["permutation"][v]["p"] <= 1
        ranks = stats.rankdata(-absd.ravel()).reshape(SHAPE)
        np.testing.assert_allclose(np.array(s["per_head"][v]["rank_abs_delta"], dtype=float), ranks)
        if v == "kl_norm":
            ranks_kl = ranks
        # standardised shifts: Welch t and Cohen's d (average variance); the lead test ranks |t|
        welch = stats.ttest_ind(xa, xb, equal_var=False)
        np.testing.assert_allclose(np.array(s["delta_z"][v], dtype=float), welch.statistic, rtol=1e-9)
        d = (xa.mean(0) - xb.mean(0)) / np.sqrt((xa.var(0, ddof=1) + xb.var(0, ddof=1)) / 2)
        np.testing.assert_allclose(np.array(s["effect_size"][v], dtype=float), d, rtol=1e-9)
        absz = np.abs(welch.statistic)
        ref_z = stats.mannwhitneyu(absz[mask], absz[~mask], alternative="greater")
        lead = s["circuit_test"][v]
        assert lead["statistic"] == ref_z.statistic and lead["rank_test_p"] == pytest.approx(ref_z.pvalue, rel=1e-12)
        assert 1 / 301 <= lead["pvalue"] <= 1 and lead["alternative"] == "greater"
        # minimum-effect test at x: p = F((x - |delta|)/SE) + F((-x - |delta|)/SE), Welch df; at 0 Welch's p
        x_min, c = s["min_effect"][v], np.abs(xa.mean(0) - xb.mean(0))
        p_x = stats.t.cdf((x_min - c) / se, welch.df) + stats.t.cdf((-x_min - c) / se, welch.df)
        np.testing.assert_allclose(np.array(s["min_effect_tests"][v]["p"], dtype=float), np.minimum(p_x, 1), rtol=1e-9)
        np.testing.assert_allclose(np.array(s["min_effect_tests"][v]["p_zero"], dtype=float), welch.pvalue, rtol=1e-9)
        assert s["design"] == "independent"
        # layer-stratified: sum of within-layer U over layers holding both kinds of head
        u = sum(stats.mannwhitneyu(absd[l][mask[l]], absd[l][~mask[l]]).statistic for l in (0, 2, 3))
        assert s["layer_stratified"][v]["U"] == u and s["layer_stratified"][v]["layers"] == [0, 2, 3]
    heads = {(e["layer"], e["head"]): e for e in s["circuit_heads"]}
    assert heads[(3, 1)]["rank_abs_kl_norm"] == ranks_kl[3, 1] and heads[(0, 2)]["role"] == "Previous Token"
    assert heads[(3, 1)]["ablation"] == 0.6

    ka, kb = x["kl_norm"]
    ca = x["chi"][0]
    c = s["correlations"]
    assert c["kl_chi_head_means"] == pytest.approx(np.corrcoef(ka.mean(0).ravel(), ca.mean(0).ravel())[0, 1])
    assert c["kl_chi_points"] == pytest.approx(np.corrcoef(ka.ravel(), ca.ravel())[0, 1])
    dk = ka.mean(0) - kb.mean(0)
    dc = x["chi"][0].mean(0) - x["chi"][1].mean(0)
    assert c["dkl_dchi"] == pytest.approx(np.corrcoef(dk.ravel(), dc.ravel())[0, 1])
    layer = np.repeat(np.arange(SHAPE[0]), SHAPE[1]).reshape(SHAPE)
    assert c["layer_kl_noncircuit"] == pytest.approx(np.corrcoef(layer[~mask], ka.mean(0)[~mask])[0, 1])
    rho = stats.spearmanr(np.abs(dk).ravel(), ablation.ravel()).statistic
    assert s["ablation_spearman"]["rho"] == pytest.approx(rho)

    c_diff = np.corrcoef(ka.reshape(40, -1), rowvar=False) - np.corrcoef(kb.reshape(30, -1), rowvar=False)
    m = mask.ravel()
    involved = ~(m[:, None] & m[None, :]) & ~np.eye(m.size, dtype=bool)
    sigma = c_diff[involved].std()
    assert s["c_diff"]["sigma"] == pytest.approx(sigma)
    iu = np.triu_indices(m.size, 1)
    expected = {(i // 6, i % 6, j // 6, j % 6) for i, j in zip(*iu) if abs(c_diff[i, j]) > 5 * sigma}
    assert {tuple(p[:4]) for p in s["c_diff"]["flagged_pairs"]} == expected
    for l1, h1, l2, h2, value, z in s["c_diff"]["flagged_pairs"]:
        assert value == pytest.approx(c_diff[l1 * 6 + h1, l2 * 6 + h2]) and z == pytest.approx(value / sigma)
    nm = s["c_diff"]["null_max_abs_p"]
    assert nm["observed_max"] == pytest.approx(np.abs(c_diff[iu]).max())
    assert [1, 0, 3, 1] in [p[:4] for p in nm["significant_pairs"]]  # the planted coupling, family-wise
    assert s["prompt_curve"]["n"][-1] == 30 and s["prompt_curve"]["n"][0] == 10


def test_planted_heads_lead_and_survive_bh(report):
    _, s, _ = report
    ranks = np.array(s["per_head"]["kl_norm"]["rank_abs_delta"], dtype=float)
    assert ranks[3, 1] <= 2 and ranks[2, 4] <= 2
    assert [3, 1] in s["per_head"]["kl_norm"]["bh_0.05"] and [2, 4] in s["per_head"]["kl_norm"]["bh_0.05"]


def test_clustered_c_diff_draws_the_summary_order(report):
    """Fig. 8's matrix is C_diff permuted into summary.json's dendrogram order, tree leaves included."""
    from analysis.circuits import load_circuit
    from analysis.pipeline import run_analysis
    from analysis.sections.cross_head import clustered_c_diff

    root, summary, _ = report
    with xr.open_zarr(root / "run.zarr") as ds:
        an = run_analysis(ds, load_circuit(root / "toy.toml"), "repeated", "random", n_boot=50, n_perm=50, seed=1,
                          curve=False)
    order = np.array([layer * SHAPE[1] + head for layer, head in summary["c_diff"]["dendrogram_order"]])
    np.testing.assert_array_equal(order, an.cross_head.order)
    fig = clustered_c_diff(an)
    tree_ax, matrix_ax = fig.axes[:2]
    drawn = np.asarray(matrix_ax.images[0].get_array())
    np.testing.assert_array_equal(drawn, an.cross_head.c_diff.values[np.ix_(order, order)])
    labels = [t.get_text() for t in matrix_ax.get_xticklabels()]
    assert labels == [f"{k // SHAPE[1]}.{k % SHAPE[1]}" for k in order]
    bold = {t.get_text() for t in matrix_ax.get_xticklabels() if t.get_fontweight() == "bold"}
    assert bold == {"3.1", "2.4", "0.2"}  # the circuit's heads, every role


def test_same_seed_same_summary(report, tmp_path):
    root, s, _ = report
    again = write_report(str(root / "run.zarr"), str(tmp_path / "again"), n_boot=300, n_perm=300, seed=1)
    assert again == s


@pytest.fixture(scope="module")
def small_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, seed=1), root / "ok.zarr")
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, seed=1).drop_vars("chi"), root / "nochi.zarr")
    neox = make_dataset(n_layers=12, n_heads=12, n_prompts=12, seed=1)
    neox.attrs["model_type"] = "gpt_neox"  # GPT-2 small's shape, another family: ioi23 is no default
    write_store(neox, root / "neox.zarr")
    (root / "big.toml").write_text('[roles]\n"Name Mover" = ["9.6"]\n')
    (root / "ok.toml").write_text('[roles]\n"X" = ["1.1"]\n')
    return root


@pytest.mark.parametrize("args, message", [
    (["missing.zarr"], "does not exist"),
    (["nochi.zarr", "--circuit", "ok.toml"], "lacks variable(s) chi"),
    (["ok.zarr", "--circuit", "ok.toml", "--a", "nope"], "unknown condition 'nope'"),
    (["ok.zarr", "--circuit", "big.toml"], "names heads 9.6 that a 2x3 model lacks"),
    (["ok.zarr", "--circuit", "nope.toml"], "unknown circuit"),
])
def test_bad_input_is_one_line_exit_2_nothing_written(small_store, capsys, args, message, monkeypatch):
    monkeypatch.chdir(small_store)
    out = small_store / "out"
    assert main([*args, "--out", str(out), "--n-boot", "20", "--n-perm", "20"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("error: ")
    assert not out.exists()
    with pytest.raises(AnalysisError):
        write_report(args[0], str(out), circuit=args[args.index("--circuit") + 1] if "--circuit" in args else None,
                     a=args[args.index("--a") + 1] if "--a" in args else None, n_boot=20, n_perm=20)


@pytest.mark.parametrize("store", ["ok.zarr", "neox.zarr"])
def test_a_store_without_a_circuit_gets_the_circuit_free_report(small_store, capsys, store, monkeypatch):
    """No --circuit and no default for the model (a 2x3 GPT-2, a 12x12 NeoX): the circuit-free sections run
    (shifts, standardised shifts, flagged heads, correlations, cross-head structure), the circuit tests are
    absent, and the report says they need --circuit."""
    monkeypatch.chdir(small_store)
    out = small_store / f"free-{store}"
    assert main([store, "--out", str(out), "--n-boot", "30", "--n-perm", "30"]) == 0, capsys.readouterr().err
    assert "no circuit, so no circuit tests" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["circuit"]["name"] == "none" and summary["circuit"]["heads"] == []
    assert summary["circuit_test"] is None and summary["mannwhitney"] is None and summary["prompt_curve"] == {}
    for key in ("delta", "delta_z", "effect_size", "per_head", "min_effect_tests", "correlations", "c_diff"):
        assert summary.get(key) is not None, key
    n_heads = 2 * 3 if store == "ok.zarr" else 144
    assert np.shape(summary["per_head"]["kl_norm"]["p"]) == ((2, 3) if store == "ok.zarr" else (12, 12))
    assert len(summary["min_effect_tests"]["kl_norm"]["q_bh"]) * len(summary["min_effect_tests"]["kl_norm"]["q_bh"][0]) == n_heads
    page = (out / "report.md").read_text()
    assert "## Circuit tests" in page and "pass `--circuit FILE`" in page and "## Head shifts" in page
    figures = sorted(p.name for p in out.glob("fig*.png"))
    assert "fig3_noncircuit_heads.png" in figures and not any(f.startswith(("fig1_", "fig2_", "fig4_")) for f in figures)
    # the in-memory report is the same numbers (units of one prompt)
    again = write_report(store, str(small_store / f"mem-{store}"), n_boot=30, n_perm=30, in_memory=True)
    assert again["delta"] == summary["delta"] and again["per_head"] == summary["per_head"]


def test_inline_circuit_table_in_run_config(tmp_path):
    """`jaxdiag run` keeps a circuit file inline in the config (ablation too); the report reads it."""
    table = {"name": "inline", "roles": {"Induction": ["1.1"], "Previous Token": [[0, 2]]},
             "ablation": {"1.1": 0.9, "0.2": 0.5, "0.0": 0.0, "1.2": 0.1}}
    write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=15, shifts={"kl_norm": {(1, 1): 0.1}}, circuit=table),
                tmp_path / "s.zarr")
    s = write_report(str(tmp_path / "s.zarr"), str(tmp_path / "out"), n_boot=50, n_perm=50)
    assert s["circuit"]["name"] == "inline" and s["circuit"]["heads"] == [[0, 2], [1, 1]]
    assert s["ablation_spearman"]["n_heads"] == 4
    assert s["mannwhitney"]["kl_norm"]["min_attainable_p"] == pytest.approx(1 / 15)  # 1/C(6, 2)


def test_builtin_circuits():
    from analysis.circuits import load_circuit

    c23, c26 = load_circuit("ioi23"), load_circuit("ioi26")
    assert len(c23.heads) == 23 and len(c26.heads) == 26
    assert set(c26.heads) - set(c23.heads) == {(5, 8), (5, 9), (0, 10)}
    assert c23.role_of(10, 7) == "Negative Name Mover" and c26.role_of(0, 10) == "Duplicate Token"


def test_imports_and_runs_without_jax(tmp_path):
    run_without_jax(f"""
        from analysis.synthetic import make_dataset, write_store
        from analysis.report import write_report
        write_store(make_dataset(n_layers=2, n_heads=3, n_prompts=12, circuit="ioi23"), r"{tmp_path}/s.zarr")
        try:
            write_report(r"{tmp_path}/s.zarr", r"{tmp_path}/out", n_boot=20, n_perm=20)
        except ValueError as e:
            assert "2x3 model lacks" in str(e), e
        (open(r"{tmp_path}/c.toml", "w")).write('[roles]\\n"X" = ["1.1"]\\n')
        s = write_report(r"{tmp_path}/s.zarr", r"{tmp_path}/out", circuit=r"{tmp_path}/c.toml", n_boot=20, n_perm=20)
        assert s["circuit"]["heads"] == [[1, 1]]
    """)


@pytest.fixture(scope="module")
def killed_store(tmp_path_factory):
    """A paired store whose run was killed: 12 of 12 `ioi` prompts and 9 of 12 `non_ioi` ones stored."""
    root = tmp_path_factory.mktemp("killed")
    ds = make_dataset(n_layers=2, n_heads=3, n_prompts=12, seed=2, pair_corr=0.5, circuit={"roles": {"X": ["1.1"]}})
    ds.attrs["complete"] = False
    ds.attrs["config"] = json.dumps({**json.loads(ds.attrs["config"]), "prompts": {"n_prompts": 12}})
    lost = ds["n_tokens"].copy()
    lost[1, 9:] = 0  # the chunk that was never written
    ds = ds.assign_coords(n_tokens=lost)
    for v in ds.data_vars:
        if {"condition", "prompt"} <= set(ds[v].dims) and ds[v].dtype.kind == "f":
            ds[v][1, 9:] = np.nan
    write_store(ds, root / "killed.zarr")
    return root / "killed.zarr"


def test_incomplete_store_is_refused_in_one_line(killed_store, capsys):
    out = killed_store.parent / "refused"
    assert main([str(killed_store), "--out", str(out), "--n-boot", "20", "--n-perm", "20"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "incomplete (ioi 12, non_ioi 9 of 12 prompts stored)" in err
    assert f"--out {killed_store} --resume" in err and "--allow-incomplete" in err
    assert not out.exists()


@pytest.mark.parametrize("in_memory", [False, True])
def test_allow_incomplete_analyses_the_complete_pairs_and_says_so(killed_store, tmp_path, in_memory):
    s = write_report(str(killed_store), str(tmp_path), n_boot=50, n_perm=50, allow_incomplete=True, in_memory=in_memory)
    assert list(s)[0] == "incomplete" and "complete pairs" in s["incomplete"] and "non_ioi 9 of 12" in s["incomplete"]
    assert s["design"] == "paired"  # not silently independent: the 9 stored pairs, matched
    assert s["n_prompts"] == {"ioi": 9, "non_ioi": 9}
    assert (tmp_path / "report.md").read_text().startswith("> **Note:** incomplete store")


def test_report_into_an_unwritable_folder_fails_before_work(small_store, tmp_path, capsys):
    """--out is a file, or lies under one (permission bits are not tested: the suite may run as root)."""
    (tmp_path / "file").write_text("")
    for out in (tmp_path / "file", tmp_path / "file" / "report"):
        assert main([str(small_store / "ok.zarr"), "--out", str(out), "--circuit", str(small_store / "ok.toml"),
                     "--n-boot", "20", "--n-perm", "20"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and str(out) in err
    assert (tmp_path / "file").read_text() == ""


def test_verify_refuses_an_incomplete_store_and_an_unwritable_out(killed_store, tmp_path, capsys):
    from jaxdiag.cli import main as jaxdiag_main

    (tmp_path / "file").write_text("")
    for out, message in ((tmp_path / "v", "incomplete (ioi 12, non_ioi 9 of 12 prompts stored)"),
                         (tmp_path / "file", "exists and is not a folder")):
        assert jaxdiag_main(["verify", str(killed_store), "--out", str(out), "--no-compile-cache"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "v").exists()
    # allowed, it gets past the completeness check to the store's own shortcoming (no AtP estimates)
    assert jaxdiag_main(["verify", str(killed_store), "--out", str(tmp_path / "v"), "--no-compile-cache",
                         "--allow-incomplete"]) == 2
    assert "no attribution-patching estimates" in capsys.readouterr().err
