"""Head taxonomy: classify recovers planted roles, the sink rate on constructed attention, intervals around
planted means, NaN (not 0) without repeats, the report section and figure without JAX, and stores written
before the taxonomy variables reporting exactly as before."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import analysis
from analysis.errors import AnalysisError
from analysis.report import write_report
from analysis.synthetic import BACKGROUND_SCORE, ROLE_SCORE, make_dataset, write_store
from analysis.taxonomy import (DEFAULT_THRESHOLDS, EPSILON, NO_ROLE, ROLE_SCORES, SCORES, TAXONOMY_VARIABLES,
                               classify, head_taxonomy)
from tests.jaxfree import run_without_jax

SHAPE = (3, 4)
CONDITIONS = ("repeated", "random")
PLANTED = {"previous_token": [(0, 1)], "induction": [(1, 2), (2, 1)], "duplicate_token": [(0, 3)],
           "self": [(2, 0)], "sink": [(0, 0), (2, 3)]}
CIRCUIT = {"name": "toy", "roles": {"Induction": ["1.2", "2.1"]}}


def planted_store(**kwargs) -> xr.Dataset:
    return make_dataset(n_layers=SHAPE[0], n_heads=SHAPE[1], n_prompts=(30, 24), conditions=CONDITIONS,
                        roles=PLANTED, seed=7, circuit=CIRCUIT, **kwargs)


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("taxonomy")
    ds = planted_store()
    write_store(ds, root / "with.zarr")
    write_store(ds.drop_vars(list(TAXONOMY_VARIABLES)), root / "without.zarr")
    settings = dict(n_boot=200, n_perm=100, seed=1)
    with_tax = write_report(str(root / "with.zarr"), str(root / "out_with"), **settings)
    without = write_report(str(root / "without.zarr"), str(root / "out_without"), **settings)
    return root, ds, with_tax, without


def test_classify_recovers_exactly_the_planted_heads(planted):
    _, ds, _, _ = planted
    labels = analysis.classify(ds)
    assert analysis.classify is classify
    for role, heads in PLANTED.items():
        found = [tuple(int(x) for x in hw) for hw in np.argwhere(labels[role].values)]
        assert found == sorted(heads), role
        assert labels[role].dtype == bool
    assert labels["label"].sel(layer=1, head=2).item() == "induction"
    assert labels["label"].sel(layer=1, head=0).item() == NO_ROLE
    # the roles that need repeats are decided on the condition that has them
    assert labels.attrs["sources"]["induction"] == "repeated"
    assert labels.attrs["thresholds"] == DEFAULT_THRESHOLDS


def test_thresholds_and_conditions_are_settable(planted):
    _, ds, _, _ = planted
    strict = classify(ds, thresholds={"induction": ROLE_SCORE + 0.1})  # above every planted mean
    assert not strict["induction"].values.any() and strict["sink"].values.sum() == 2
    loose = classify(ds, thresholds={"previous_token": BACKGROUND_SCORE / 2})  # under every head's mean
    assert loose["previous_token"].values.all()
    assert (loose["label"].sel(layer=0, head=3).item() == "previous_token+duplicate_token")
    # on the condition without repeats nothing is an induction head: its means are NaN, not >= 0.3
    assert not classify(ds, condition={"induction": "random"})["induction"].values.any()
    with pytest.raises(AnalysisError, match="unknown role"):
        classify(ds, thresholds={"inductoin": 0.5})
    with pytest.raises(AnalysisError, match="unknown condition"):
        classify(ds, condition="nope")


def test_intervals_contain_the_planted_means(planted):
    _, ds, _, _ = planted
    t = head_taxonomy(ds, n_boot=400, seed=3)
    wide = head_taxonomy(ds, n_boot=400, seed=3, confidence_level=0.999)
    covered, total = 0, 0
    for role, var in ROLE_SCORES.items():
        m = t.means[var]
        for condition in CONDITIONS:
            truth = np.full(SHAPE, BACKGROUND_SCORE)
            for layer, head in PLANTED[role]:
                truth[layer, head] = ROLE_SCORE
            low = m.confidence_interval.low.sel(condition=condition).values
            high = m.confidence_interval.high.sel(condition=condition).values
            if condition == "random" and var in ("dup_attn", "induction_attn"):
                continue  # undefined there (tested below)
            inside = (low <= truth) & (truth <= high)
            assert np.all(high - low < 0.1) and np.all(low < high)
            w = wide.means[var].confidence_interval
            for layer, head in PLANTED[role]:  # every planted head, at a level where a miss is rare
                at = {"condition": condition, "layer": layer, "head": head}
                assert float(w.low.sel(at)) <= ROLE_SCORE <= float(w.high.sel(at)), (var, at)
                assert float(low[layer, head]) > DEFAULT_THRESHOLDS[role]  # clearly above the role's cut
            covered, total = covered + inside.sum(), total + inside.size
    assert covered / total >= 0.85  # 95% intervals: a few background heads may miss by chance


def test_no_repeats_gives_nan_means_not_zero(planted):
    _, ds, s, _ = planted
    t = head_taxonomy(ds, n_boot=50, seed=0)
    for var in ("dup_attn", "induction_attn"):
        m = t.means[var]
        assert np.isnan(m.statistic.sel(condition="random").values).all()
        assert np.isnan(m.confidence_interval.low.sel(condition="random").values).all()
        assert (m.n.sel(condition="random").values == 0).all()
        assert np.isfinite(m.statistic.sel(condition="repeated").values).all()
        assert s["taxonomy"]["scores"][var]["random"] == [[None] * SHAPE[1]] * SHAPE[0]
    # a condition whose prompts repeat nothing in only some prompts: means over the prompts that do
    partial = ds.copy(deep=True)
    partial["induction_attn"][0, ::2] = np.nan
    m = head_taxonomy(partial, n_boot=50, seed=0).means["induction_attn"]
    expected = np.nanmean(partial["induction_attn"].values[0, :30].astype(float), axis=0)
    np.testing.assert_allclose(m.statistic.sel(condition="repeated").values, expected)
    assert (m.n.sel(condition="repeated").values == 15).all()


def uniform_attention_store(lengths: dict[str, list[int]], sink_heads=(), n_layers=2, n_heads=3) -> xr.Dataset:
    """A query="all" store of heads attending uniformly over their visible keys (pi_j = 1/(t+1) at query t),
    except sink_heads, which put all attention on the first token. Padding queries are NaN."""
    names = list(lengths)
    n_max, width = max(len(v) for v in lengths.values()), max(max(v) for v in lengths.values())
    shape = (len(names), n_max, n_layers, n_heads, width)
    bos = np.full(shape, np.nan, dtype=np.float32)
    n_tokens = np.zeros((len(names), n_max), dtype=np.int32)
    for c, name in enumerate(names):
        for p, n in enumerate(lengths[name]):
            bos[c, p, :, :, :n] = 1.0 / np.arange(1, n + 1)
            n_tokens[c, p] = n
    for layer, head in sink_heads:
        bos[:, :, layer, head] = np.where(np.isnan(bos[:, :, layer, head]), np.nan, 1.0)
    prev = bos.copy()
    prev[..., 0] = np.nan  # no previous token at t = 0
    dims = ("condition", "prompt", "layer", "head", "query")
    return xr.Dataset({"bos_attn": (dims, bos), "prev_attn": (dims, prev), "self_attn": (dims, bos.copy())},
                      coords={"condition": names, "prompt": np.arange(n_max), "layer": np.arange(n_layers),
                              "head": np.arange(n_heads), "query": np.arange(width),
                              "n_tokens": (("condition", "prompt"), n_tokens)},
                      attrs={"query_positions": "all"})


def harmonic(n: int) -> float:
    return float(np.sum(1.0 / np.arange(1, n + 1)))


def test_sink_rate_on_uniform_attention_and_planted_sinks():
    ds = uniform_attention_store({"short": [16] * 6, "long": [64] * 4 + [16] * 2})
    t = head_taxonomy(ds, n_boot=50, seed=0)
    bos = t.means["bos_attn"].statistic
    # alpha_1 of uniform causal attention = H_T / T: 0.211 at T = 16, below epsilon = 0.3
    np.testing.assert_allclose(bos.sel(condition="short").values, harmonic(16) / 16, rtol=1e-6)
    assert harmonic(16) / 16 == pytest.approx(0.211, abs=1e-3) and harmonic(16) / 16 < EPSILON
    # padding queries skipped: each prompt averages its own length, then prompts weigh equally
    expected_long = (4 * harmonic(64) / 64 + 2 * harmonic(16) / 16) / 6
    np.testing.assert_allclose(bos.sel(condition="long").values, expected_long, rtol=1e-6)
    assert t.sink_rate.statistic.values.tolist() == [0.0, 0.0]
    assert not t.labels["sink"].values.any()
    # prev_attn is undefined at t = 0 and averaged over the rest
    np.testing.assert_allclose(t.means["prev_attn"].statistic.sel(condition="short").values,
                               (harmonic(16) - 1) / 15, rtol=1e-6)

    sinks = head_taxonomy(uniform_attention_store({"short": [16] * 6}, sink_heads=[(1, 2)]), n_boot=50, seed=0)
    assert sinks.sink_rate.statistic.values.tolist() == [pytest.approx(1 / 6)]
    assert sinks.sink_rate.n_heads.values.tolist() == [6]
    assert [tuple(map(int, h)) for h in np.argwhere(sinks.labels["sink"].values)] == [(1, 2)]
    # a smaller epsilon counts every uniform head (0.211 > 0.2) as a sink
    assert head_taxonomy(ds, n_boot=20, seed=0, epsilon=0.2).sink_rate.statistic.values.tolist() == [1.0, 0.0]


def test_summary_taxonomy_entry(planted):
    root, ds, s, _ = planted
    tax = s["taxonomy"]
    assert set(tax["scores"]) == set(SCORES) and set(tax["scores"]["prev_attn"]) == set(CONDITIONS)
    assert np.asarray(tax["scores"]["prev_attn"]["repeated"]).shape == SHAPE
    assert set(tax["ci"]["bos_attn"]["random"]) == {"low", "high"}
    assert tax["epsilon"] == 0.3 and tax["thresholds"] == DEFAULT_THRESHOLDS
    assert tax["labels"]["1.2"] == ["induction"] and tax["labels"]["1.0"] == []
    assert tax["labels"]["0.0"] == ["sink"] and len(tax["labels"]) == SHAPE[0] * SHAPE[1]
    assert tax["sink_rate"] == {"repeated": pytest.approx(2 / 12), "random": pytest.approx(2 / 12)}
    assert tax["sources"]["induction"] == "repeated"
    # the means recompute from the store with plain numpy
    raw = ds["prev_attn"].sel(condition="random").values[:24].astype(float)
    np.testing.assert_allclose(tax["scores"]["prev_attn"]["random"], raw.mean(axis=0))
    on_disk = json.loads((root / "out_with" / "summary.json").read_text())
    assert on_disk["taxonomy"]["labels"] == tax["labels"]


def test_report_section_and_figure(planted):
    root, _, _, _ = planted
    md = (root / "out_with" / "report.md").read_text()
    section = md.split("## Head taxonomy")[1].split("## Figures")[0]
    assert "Sink rate" in section and "H_T / T" in section and "never 0" in section
    assert "induction: 1.2 2.1" in section and "sink: 0.0 2.3" in section
    assert "induction_attn >= 0.300 on `repeated`" in section
    assert "| 1.2 | induction | `repeated` |" in section
    random_row = next(line for line in section.splitlines() if line.startswith("|  |  | `random` |"))
    assert random_row.count("n/a") == 2  # dup_attn and induction_attn without repeats
    png = root / "out_with" / "fig11_head_taxonomy.png"
    assert png.read_bytes()[:4] == b"\x89PNG" and "![fig11_head_taxonomy.png]" in md


def test_store_without_taxonomy_reports_as_before(planted):
    root, _, with_tax, without = planted
    assert "taxonomy" not in without
    md = (root / "out_without" / "report.md").read_text()
    assert "Head taxonomy" not in md and "fig11" not in md
    assert not (root / "out_without" / "fig11_head_taxonomy.png").exists()
    # the taxonomy variables change nothing else: every other key is the same numbers
    drop = ("taxonomy", "store")
    strip = lambda s: {k: ({x: y for x, y in v.items() if x != "taxonomy"} if k == "scale" else v)  # noqa: E731
                       for k, v in s.items() if k not in drop}  # scale.taxonomy: how the section was streamed
    assert strip(with_tax) == strip(without)
    md_with = (root / "out_with" / "report.md").read_text()
    head_with, head_without = md_with.split("## Head taxonomy")[0], md.split("## Figures")[0]
    assert head_with.replace("with.zarr", "without.zarr") == head_without
    # classify still works there, from bos_attn alone
    old = classify(xr.open_zarr(root / "without.zarr", chunks=None))
    assert [v for v in old.data_vars if old[v].dtype == bool] == ["sink"]


def test_default_synthetic_store_is_unchanged_by_the_new_options():
    plain = make_dataset(seed=4)
    planted_roles = make_dataset(seed=4, roles={"induction": [(1, 1)]})
    assert not set(TAXONOMY_VARIABLES) & set(plain.data_vars)
    for v in plain.data_vars:
        if v != "bos_attn":  # planting rewrites the sink score only
            np.testing.assert_array_equal(plain[v].values, planted_roles[v].values)
    assert plain.attrs["schema_version"] == 1 and planted_roles.attrs["schema_version"] == 2


def test_taxonomy_report_runs_without_jax(tmp_path):
    run_without_jax(f"""
        from analysis.synthetic import make_dataset, write_store
        from analysis.report import write_report
        import analysis
        ds = make_dataset(n_layers=2, n_heads=3, n_prompts=12, roles={{"induction": [(1, 1)]}},
                          circuit={{"name": "t", "roles": {{"x": ["1.1"]}}}})
        assert analysis.classify(ds)["induction"].values.sum() == 1
        write_store(ds, r"{tmp_path}/s.zarr")
        s = write_report(r"{tmp_path}/s.zarr", r"{tmp_path}/out", n_boot=20, n_perm=20)
        assert s["taxonomy"]["labels"]["1.1"] == ["induction"], s["taxonomy"]["labels"]
        assert "## Head taxonomy" in open(r"{tmp_path}/out/report.md").read()
    """)
    assert (tmp_path / "out" / "fig11_head_taxonomy.png").exists()
