"""Issue 29's report sections beyond per-head scores (analysis.beyond_heads; sections position_patching, dla,
logit_lens): planted effects recovered with intervals that cover them, prompts without a role dropping out of its
cells, the DLA sum rule, the sections skipping on stores without their variables (which report exactly as
before), the streamed report equal to the in-memory one, and the report without JAX."""

from __future__ import annotations

import json

import numpy as np
import pytest

from analysis import pipeline
from analysis._util import to_jsonable
from analysis.beyond_heads import BEYOND_VARIABLES
from analysis.circuits import from_mapping
from analysis.effects import effect_kinds
from analysis.report import write_report
from analysis.store import open_store
from analysis.streaming import at_roles
from analysis.summary import summary
from analysis.synthetic import DLA_ATTN_BIAS, DLA_EMBED, DLA_MLP, METRIC_MEAN, ROLES, make_dataset, write_store
from tests.jaxfree import run_without_jax
from tests.test_analysis_scale import _assert_close, _refuse_eager_loads

SHAPE = (3, 4)
N = 40
LENS = [0.2, 0.6]  # lens fractions of layers 0 and 1 (layer 2 reads the metric)
PATCHING = {"resid": {(1, "S2"): -1.0}, "attn_out": {(2, "END"): 0.5}, "mlp_out": {(0, 6): 0.3},
            "head_pos": {(2, 1, "S2"): 0.8}}
DLA = {(1, 2): 0.6, (2, 0): -0.4}
CIRCUIT = {"name": "toy", "roles": {"x": ["1.2", "2.0"]}}
NEW_KEYS = ("position_patching", "dla", "logit_lens")
SETTINGS = dict(n_boot=200, n_perm=20, seed=1)


def planted_store(**kwargs):
    return make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=N, pair_corr=0.3, seed=5, circuit=CIRCUIT,
                        dla=DLA, lens=LENS, patching=PATCHING, **kwargs)


def without(ds):
    return ds.drop_vars([v for v in BEYOND_VARIABLES if v in ds.data_vars] + ["metric", "role"])


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("beyond")
    ds = planted_store()
    write_store(ds, root / "with.zarr")
    write_store(without(ds), root / "without.zarr")
    with_new = write_report(str(root / "with.zarr"), str(root / "out_with"), **SETTINGS)
    old = write_report(str(root / "without.zarr"), str(root / "out_without"), **SETTINGS)
    return root, ds, with_new, old


def _cell(entry, condition, *index):
    c = entry[condition]
    return tuple(np.asarray(c[k], dtype=float)[index] for k in ("mean", "low", "high", "n"))


def test_planted_resid_effect_at_s2_is_the_top_role_cell(planted):
    _, _, s, _ = planted
    role = s["position_patching"]["resid"]["role"]
    assert role["dims"] == ["layer", "role"] and role["coords"]["role"] == list(ROLES)
    mean = np.asarray(role["ioi"]["mean"], dtype=float)
    top = np.unravel_index(np.nanargmax(np.abs(mean)), mean.shape)
    assert top == (1, ROLES.index("S2"))
    m, low, high, n = _cell(role, "ioi", 1, ROLES.index("S2"))
    assert low <= -1.0 <= high and high - low < 0.1 and n == N
    assert role["ioi"]["ci_excludes_0"][1][ROLES.index("S2")] is True
    # the position view spreads it over the S2 positions of the three prompt lengths (9, 10, 11)
    pos = np.asarray(s["position_patching"]["resid"]["position"]["ioi"]["mean"], dtype=float)
    layer, position = np.unravel_index(np.nanargmax(np.abs(pos)), pos.shape)
    assert layer == 1 and position in (9, 10, 11)
    # the other planted cells
    m, low, high, _ = _cell(s["position_patching"]["attn_out"]["role"], "ioi", 2, ROLES.index("END"))
    assert low <= 0.5 <= high
    mlp = s["position_patching"]["mlp_out"]["position"]
    m, low, high, n = _cell(mlp, "ioi", 0, 6)
    assert low <= 0.3 <= high and n == N
    head = s["position_patching"]["head_pos"]["role"]
    assert head["dims"] == ["layer", "head", "role"]
    hm = np.asarray(head["ioi"]["mean"], dtype=float)
    assert np.unravel_index(np.nanargmax(np.abs(hm)), hm.shape) == (2, 1, ROLES.index("S2"))
    _, low, high, _ = _cell(head, "ioi", 2, 1, ROLES.index("S2"))
    assert low <= 0.8 <= high


def test_prompt_counts_per_cell(planted):
    _, ds, s, _ = planted
    role = s["position_patching"]["resid"]["role"]["ioi"]["n"]
    assert role[0][ROLES.index("S1+1")] == N - N // 5  # absent on every fifth prompt: those drop out
    assert role[0][ROLES.index("IO")] == N
    pos = s["position_patching"]["resid"]["position"]["ioi"]["n"]
    lengths = ds["n_tokens"].sel(condition="ioi").values
    assert [pos[0][p] for p in range(15)] == [int((lengths > p).sum()) for p in range(15)]  # NaN past the end
    assert pos[0][14] == -(-N // 3) and pos[0][0] == N


def test_intervals_cover_the_planted_values(planted):
    """Every patching cell of both conditions (truth: the planted value at its role, 0 elsewhere): 95% intervals
    cover their truth in at least 85% of cells."""
    _, _, s, _ = planted
    covered, total = 0, 0
    for kind, planted_cells in PATCHING.items():
        role = s["position_patching"][kind].get("role")
        for condition in ("ioi", "non_ioi"):
            low, high = (np.asarray(role[condition][k], dtype=float) for k in ("low", "high"))
            truth = np.zeros(low.shape)
            for key, value in planted_cells.items():
                if condition == "ioi" and isinstance(key[-1], str):
                    truth[(*key[:-1], ROLES.index(key[-1]))] = value
            if kind == "mlp_out":  # planted at an absolute position: not a role cell (IO, S1, S1+1 sit at 1, 3, 4)
                truth[:] = 0.0
            ok = (low <= truth) & (truth <= high)
            covered, total = covered + ok.sum(), total + ok.size
    assert covered / total >= 0.85, covered / total


def test_dla_heads_components_and_sum_rule(planted):
    _, ds, s, _ = planted
    d = s["dla"]
    heads = d["heads"]
    mean = np.asarray(heads["ioi"]["mean"], dtype=float)
    order = np.argsort(-np.abs(mean), axis=None)[:2]
    assert {np.unravel_index(k, SHAPE) for k in order} == set(DLA)
    for (layer, head), value in DLA.items():
        _, low, high, n = _cell(heads, "ioi", layer, head)
        assert low <= value <= high and n == N
    for name, value in (("attn_bias", DLA_ATTN_BIAS), ("mlp", DLA_MLP)):
        low, high = (np.asarray(d["components"][name]["ioi"][k], dtype=float) for k in ("low", "high"))
        assert ((low <= value) & (value <= high)).mean() >= 2 / 3, name
    low, high = d["components"]["embed"]["ioi"]["low"], d["components"]["embed"]["ioi"]["high"]
    assert low[0] <= DLA_EMBED <= high[0]
    for condition in ("ioi", "non_ioi"):
        rule = d["sum_rule"][condition]
        assert rule["n_prompts"] == N and rule["max_abs_residual"] < 1e-5
    # the sum rule is checked, not assumed: a broken prompt shows
    broken = ds.copy(deep=True)
    broken["dla_norm_bias"][0, 3] += 0.5
    an = pipeline.run_analysis(broken, from_mapping(CIRCUIT, name="toy", source="t"), "ioi", "non_ioi", n_boot=20,
                               n_perm=10, curve=False)
    rule = to_jsonable(summary(an))["dla"]["sum_rule"]
    assert rule["ioi"]["max_abs_residual"] == pytest.approx(0.5, abs=1e-4) and rule["non_ioi"]["max_abs_residual"] < 1e-5


def test_logit_lens_curve(planted):
    _, ds, s, _ = planted
    lens = s["logit_lens"]["metric"]
    for condition in ("ioi", "non_ioi"):
        mean, low, high = (np.asarray(lens[condition][k], dtype=float) for k in ("mean", "low", "high"))
        for layer, frac in enumerate(LENS):
            assert low[layer] <= frac * METRIC_MEAN <= high[layer], (condition, layer)
        metric = ds["metric"].sel(condition=condition).values.astype(float)
        assert mean[-1] == pytest.approx(metric.mean(), rel=1e-6)  # the last layer reads the metric
        assert lens[condition]["n"] == [N] * SHAPE[0]
    assert np.asarray(s["logit_lens"]["rank"]["ioi"]["mean"])[-1] == 0.0


def test_report_sections_and_figures(planted):
    root, _, _, _ = planted
    md = (root / "out_with" / "report.md").read_text()
    patching = md.split("## Activation patching by position")[1].split("\n## ")[0]
    by_role = patching.split("### effect_patch_resid by role")[1].split("###")[0]
    first = next(line for line in by_role.splitlines() if line.startswith("| `ioi`"))
    assert "L1 @ S2" in first and "| yes |" in first
    assert "## Direct logit attribution" in md and "Sum rule" in md and "## Logit lens" in md
    dla = md.split("## Direct logit attribution")[1].split("\n## ")[0]
    assert next(line for line in dla.splitlines() if line.startswith("| `ioi`")).split("|")[2].strip() == "1.2"
    for fig in ("fig12_patching_by_position", "fig13_patching_by_role", "fig14_head_patching", "fig15_dla",
                "fig16_logit_lens"):
        assert (root / "out_with" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG" and f"![{fig}.png]" in md
    assert json.loads((root / "out_with" / "summary.json").read_text())["dla"]["sum_rule"]["ioi"]["n_prompts"] == N


def test_store_without_the_variables_reports_as_before(planted):
    root, _, with_new, old = planted
    assert not set(NEW_KEYS) & set(old)
    md = (root / "out_without" / "report.md").read_text()
    for title in ("Activation patching by position", "Direct logit attribution", "Logit lens", "fig12", "fig15"):
        assert title not in md
    assert not list((root / "out_without").glob("fig1[2-6]_*"))
    # the new variables change nothing else (dla is not compared as a diagnostic): every other key the same numbers
    strip = lambda s: {k: ({x: y for x, y in v.items() if x not in NEW_KEYS} if k == "scale" else v)  # noqa: E731
                       for k, v in s.items() if k not in (*NEW_KEYS, "store")}
    assert strip(with_new) == strip(old)
    assert "dla" not in with_new["delta"]
    head_with = (root / "out_with" / "report.md").read_text().split("\n## Activation patching")[0]
    head_without = md.split("\n## Figures")[0]
    assert head_with.replace("with.zarr", "without.zarr") == head_without


def test_each_section_skips_without_its_variables():
    ds = planted_store()
    circuit = from_mapping(CIRCUIT, name="toy", source="t")
    lens_only = ds.drop_vars([v for v in BEYOND_VARIABLES if v in ds.data_vars and v != "lens_metric"])
    s = to_jsonable(summary(pipeline.run_analysis(lens_only, circuit, "ioi", "non_ioi", n_boot=20, n_perm=10,
                                                  curve=False)))
    assert "logit_lens" in s and "rank" not in s["logit_lens"] and "dla" not in s and "position_patching" not in s
    no_roles = ds.drop_vars(["role_position", "role", "effect_patch_head_pos", "dla", "dla_mlp"])
    an = pipeline.run_analysis(no_roles, circuit, "ioi", "non_ioi", n_boot=20, n_perm=10, curve=False)
    s = to_jsonable(summary(an))
    assert set(s["position_patching"]["resid"]) == {"position"}  # no role view without role_position
    from analysis.sections import figure_names

    assert "fig13_patching_by_role" not in figure_names(an) and "fig12_patching_by_position" in figure_names(an)
    assert s["dla"]["sum_rule"] == {"checked": False, "missing": ["dla", "dla_mlp"]} and "heads" not in s["dla"]
    # a run that lists a (layer, position) patching variable among its effects: no per-head causal kind
    listed = ds.assign_attrs(effects=["patch_resid"])
    assert effect_kinds(listed) == []


def test_at_roles_gathers_each_prompts_role_position():
    values = np.arange(2 * 2 * 4, dtype=float).reshape(2, 2 * 4)  # 2 prompts, 2 layers x 4 positions
    positions = np.array([[0.0, 3.0, -1.0], [2.0, 5.0, 1.0]])  # -1 absent, 5 past the row
    out = at_roles(values, positions, 4).reshape(2, 2, 3)
    np.testing.assert_array_equal(out[0], [[0, 3, np.nan], [4, 7, np.nan]])
    np.testing.assert_array_equal(out[1], [[10, np.nan, 9], [14, np.nan, 13]])


def test_streamed_report_equals_the_in_memory_one(tmp_path, monkeypatch):
    """Units of one prompt (below G_MAX): the same draws, so every new entry agrees to rounding; nothing loaded."""
    path = write_store(planted_store(), tmp_path / "s.zarr")
    circuit = from_mapping(CIRCUIT, name="toy", source="t")
    run = dict(n_boot=100, n_perm=20, seed=2, curve=False)
    old = to_jsonable(summary(pipeline.run_analysis(open_store(path), circuit, "ioi", "non_ioi", store_path=path,
                                                    **run)))
    _refuse_eager_loads(monkeypatch)
    an = pipeline.run_analysis_streamed(path, circuit, "ioi", "non_ioi", **run)
    new = to_jsonable(summary(an))
    for key in NEW_KEYS:
        assert new["scale"][key]["unit_prompts"] == {"ioi": 1, "non_ioi": 1}
    assert old["position_patching"] and old["dla"] and old["logit_lens"]
    _assert_close(old, {k: v for k, v in new.items() if k != "scale"})


def test_beyond_heads_report_runs_without_jax(tmp_path):
    run_without_jax(f"""
        from analysis.synthetic import make_dataset, write_store
        from analysis.report import write_report
        ds = make_dataset(n_layers=2, n_heads=3, n_prompts=12, pair_corr=0.2, dla={{(1, 1): 0.5}}, lens=[0.5],
                          patching={{"resid": {{(1, "S2"): -1.0}}}}, circuit={{"name": "t", "roles": {{"x": ["1.1"]}}}})
        write_store(ds, r"{tmp_path}/s.zarr")
        s = write_report(r"{tmp_path}/s.zarr", r"{tmp_path}/out", n_boot=20, n_perm=20)
        assert s["position_patching"]["resid"]["role"]["ioi"]["n"][1][3] == 12
        text = open(r"{tmp_path}/out/report.md").read()
        assert "## Activation patching by position" in text and "## Logit lens" in text
    """)
    assert (tmp_path / "out" / "fig13_patching_by_role.png").exists()


def test_the_same_for_any_block_size(monkeypatch):
    """Blocks of 7 prompts or all at once: the same cells, intervals and sum-rule check, bit for bit."""
    from analysis import streaming

    ds = planted_store()
    circuit = from_mapping(CIRCUIT, name="toy", source="t")
    run = {"n_boot": 50, "n_perm": 10, "seed": 4, "curve": False}
    whole = to_jsonable(summary(pipeline.run_analysis(ds, circuit, "ioi", "non_ioi", **run)))
    monkeypatch.setattr(streaming, "block_rows", lambda *a, **k: 7)
    an = pipeline.run_analysis(ds, circuit, "ioi", "non_ioi", **run)
    assert an.comparison.scale is None
    small = to_jsonable(summary(an))
    for key in NEW_KEYS:
        assert small[key] == whole[key], key
