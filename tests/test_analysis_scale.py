"""The streamed report (analysis.pipeline.run_analysis_streamed) against units of one prompt (run_analysis), and
its determinism.

Tolerances: with units of one prompt (up to analysis.units.G_MAX prompts per condition) the streamed report
draws exactly the in-memory report's resamples, so every number agrees to rounding (rtol 1e-9). With units of
several prompts point estimates still agree to rounding; resampled quantities come from other draws (blocks of
prompts) and agree within Monte-Carlo error: CI endpoints within 25% of the interval's width, permutation
p-values within 0.05 + 4 binomial SDs of the in-memory p.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from analysis import pipeline, streaming, taxonomy, units
from analysis import standardised as st
from analysis._util import to_jsonable
from analysis.circuits import from_mapping
from analysis.pipeline import run_analysis
from analysis.shifts import acceleration
from analysis.store import open_store
from analysis.summary import summary
from analysis.taxonomy import head_taxonomy
from analysis.synthetic import make_dataset, write_store
from tests.oracles import jackknife_acceleration

CIRCUIT = from_mapping({"roles": {"x": [[2, 3], [1, 1], [0, 2]]}}, name="c", source="test")
RUN = dict(n_boot=200, n_perm=200, seed=3)


def _store(tmp_path, n, paired=False, nan=False):
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=n, shifts={"kl_norm": {(2, 3): 0.03}, "chi": {(1, 1): 0.02}},
                      couplings={((0, 1), (1, 2)): 0.6}, pair_corr=0.5 if paired else None, seed=1)
    if nan:  # a few undefined values, as real stores have
        ds["chi"][0, 5, 0, 0] = np.nan
        ds["kl_norm"][1, 7, 2, 1] = np.nan
    return write_store(ds, tmp_path / f"s{n}{'p' if paired else ''}{'n' if nan else ''}.zarr")


def _summaries(path, **kw):
    old = to_jsonable(summary(run_analysis(open_store(path), CIRCUIT, "ioi", "non_ioi", store_path=path, **RUN, **kw)))
    new = to_jsonable(summary(pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", **RUN, **kw)))
    return old, new


def _leaves(x, path=""):
    if isinstance(x, dict):
        for k, v in x.items():
            yield from _leaves(v, f"{path}.{k}")
    elif isinstance(x, list):
        for i, v in enumerate(x):
            yield from _leaves(v, f"{path}[{i}]")
    else:
        yield path, x


def _assert_close(old, new, rtol=1e-9, skip=()):
    flat_old, flat_new = dict(_leaves(old)), dict(_leaves(new))
    for key, a in flat_old.items():
        if any(s in key for s in skip):
            continue
        assert key in flat_new, key
        b = flat_new[key]
        if isinstance(a, float) and isinstance(b, float):
            assert math.isclose(a, b, rel_tol=rtol, abs_tol=1e-12), (key, a, b)
        else:
            assert a == b, (key, a, b)


@pytest.mark.parametrize("paired", [False, True])
def test_prompt_units_reproduce_the_in_memory_report(tmp_path, paired):
    """Up to G_MAX prompts per condition a unit is a prompt: the streamed report (lazy store) is the in-memory one
    (loaded store), bit for bit, but for its `scale` entry."""
    old, new = _summaries(_store(tmp_path, 80, paired=paired))
    assert new["scale"]["unit_prompts"] == 1 and new["scale"]["subsample"]["all_prompts"]
    assert "scale" not in old and old == {k: v for k, v in new.items() if k != "scale"}


def test_nan_values_point_estimates_exact(tmp_path):
    """NaN entries are skipped as in memory. One documented difference: BCa's acceleration counts a head's finite
    prompts (the in-memory jackknife counts every row), so delta_ci may move slightly on heads with NaN."""
    old, new = _summaries(_store(tmp_path, 60, nan=True))
    for key in ("delta", "delta_z", "effect_size", "c_diff", "correlations", "per_head", "circuit_test"):
        _assert_close(old[key], new[key])
    lo_old, lo_new = (np.array(x["delta_ci"]["chi"]["low"], float) for x in (old, new))
    np.testing.assert_allclose(lo_new[1:], lo_old[1:], rtol=1e-9)  # layers without NaN: identical


RESAMPLED = ("_ci", "delta_se", "p", "q_bh", "auc", "bootstrap", "null", "quantile", "prompt_curve", "stratified",
             "circuit_heads", "bh_0", "flagged", "verdict")


@pytest.mark.parametrize("paired", [False, True])
def test_block_units_point_estimates_exact_resampled_within_monte_carlo(tmp_path, monkeypatch, paired):
    """~10^3 prompts per condition: units of one prompt (run_analysis) against blocked streaming (units of 10
    prompts, 20 for the cross-head statistics) in the same run: point estimates exact, intervals and p-values
    within Monte-Carlo error."""
    monkeypatch.setattr(pipeline, "G_MAX", 100)
    monkeypatch.setattr(streaming, "GC_MAX", 50)
    path = _store(tmp_path, 1000, paired=paired)
    old = to_jsonable(summary(run_analysis(open_store(path), CIRCUIT, "ioi", "non_ioi", store_path=path,
                                           n_boot=400, n_perm=400, seed=3)))
    new = to_jsonable(summary(pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", n_boot=400, n_perm=400,
                                                          seed=3)))
    assert new["scale"]["unit_prompts"] == 10 and new["scale"]["cross_unit_prompts"] == 20
    for key in ("delta", "delta_z", "delta_z_se", "delta_z_df", "effect_size", "correlations"):
        _assert_close(old[key], new[key])
    _assert_close(old["c_diff"], new["c_diff"], skip=RESAMPLED + ("intervals",))
    for var in ("kl_norm", "chi"):
        for side in ("low", "high"):
            a, b = np.array(old["delta_ci"][var][side], float), np.array(new["delta_ci"][var][side], float)
            width = np.array(old["delta_ci"][var]["high"], float) - np.array(old["delta_ci"][var]["low"], float)
            assert np.all(np.abs(a - b) <= 0.25 * width), (var, side)
        pa = np.array(old["per_head"][var]["p"], float)
        pb = np.array(new["per_head"][var]["p"], float)
        assert np.all(np.abs(pa - pb) <= 0.05 + 4 * np.sqrt(pa * (1 - pa) / 400)), var
        for test in ("circuit_test",):
            p1, p2 = old[test][var]["pvalue"], new[test][var]["pvalue"]
            assert abs(p1 - p2) <= 0.05 + 4 * math.sqrt(p1 * (1 - p1) / 400), (test, var, p1, p2)


def test_acceleration_from_streamed_moments_is_the_jackknife():
    rng = np.random.default_rng(0)
    xa, xb = rng.gamma(2.0, size=(301, 5)), rng.gamma(3.0, size=(250, 5))
    ua, ub = units.unit_moments(xa, 7), units.unit_moments(xb, 7)
    np.testing.assert_allclose(acceleration((ua, 1.0), (ub, -1.0)), jackknife_acceleration(xa, xb), rtol=1e-9)
    np.testing.assert_allclose(ua.totals()["var"], xa.var(axis=0, ddof=1), rtol=1e-12)


def test_block_permutation_null_matches_the_prompt_null():
    """Relabelling blocks of 10 prompts: the null of delta has the prompt-level null's spread (calibration)."""
    rng = np.random.default_rng(1)
    xa, xb = rng.standard_normal((2000, 6)), rng.standard_normal((2000, 6))
    sd = {}
    for size in (1, 10):
        s = st.TwoSamples(st.INDEPENDENT, (6,), units.unit_moments(xa, size), units.unit_moments(xb, size))
        deltas, ts = st.permutation_null(s, 1000, np.random.default_rng(2))
        sd[size] = (deltas.std(axis=0), ts.std(axis=0))
    np.testing.assert_allclose(sd[10][0], sd[1][0], rtol=0.12)
    np.testing.assert_allclose(sd[10][1], 1.0, rtol=0.12)


def test_chunking_and_memory_do_not_change_a_bit(tmp_path, monkeypatch):
    """Blocks of 16 or of all prompts, any store chunking: the same summary.json, byte for byte."""
    path = _store(tmp_path, 150)
    text = []
    for rows in (None, 16):
        if rows is not None:
            monkeypatch.setattr(streaming, "block_rows", lambda *a, **k: rows)
        an = pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", **RUN)
        text.append(json.dumps(to_jsonable(summary(an)), allow_nan=False))
        assert an.comparison.scale["execution"]["n_blocks"] == (2 if rows is None else 2 * -(-150 // 16))
    assert text[0] == text[1]


def test_report_on_a_local_cluster_is_bit_identical(tmp_path, monkeypatch):
    """The streamed report on a dask.distributed LocalCluster of 2 worker processes (blocks of 36 prompts spread
    over both; units of 6 prompts, cross units of 18, so every per-unit kernel runs, GEMMs included, on 144 heads)
    gives the same summary.json, byte for byte, as dask's local threads with one block per condition."""
    distributed = pytest.importorskip("distributed")
    monkeypatch.setattr(pipeline, "G_MAX", 20)
    monkeypatch.setattr(streaming, "GC_MAX", 8)
    ds = make_dataset(n_layers=12, n_heads=12, n_prompts=120, shifts={"kl_norm": {(9, 6): 0.03}}, seed=5,
                      roles={"induction": [(5, 1)], "sink": [(0, 0)]}, effects={(9, 6): -1.0},
                      cheap_kinds=("atp_patch",))  # the taxonomy and effect sections' block kernels run remotely too
    path = write_store(ds, tmp_path / "big.zarr")
    circuit = from_mapping({"roles": {"x": [[9, 6], [9, 9], [10, 0]]}}, name="c", source="test")

    def text(scheduler, **kw):
        with streaming.scheduler_context(scheduler):
            an = pipeline.run_analysis_streamed(path, circuit, "ioi", "non_ioi", n_boot=99, n_perm=99, **kw)
        assert an.comparison.scale["unit_prompts"] == 6 and an.comparison.scale["cross_unit_prompts"] == 18
        assert an.taxonomy is not None and an.causal and an.cheap
        return json.dumps(to_jsonable(summary(an)), allow_nan=False)

    local = text(None)
    monkeypatch.setattr(streaming, "block_rows", lambda *a, **k: 36)  # 4 blocks per condition: both workers get some
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cl:
        remote = text(cl.scheduler_address, memory="64MB")
        workers = len(cl.scheduler_info["workers"])
    assert workers == 2 and remote == local


def test_subsample_is_stated(tmp_path, monkeypatch):
    monkeypatch.setattr(pipeline, "SAMPLE_MAX", 40)
    monkeypatch.setattr(streaming, "block_rows", lambda *a, **k: 16)  # the sample is gathered across blocks
    path = _store(tmp_path, 100)
    an = pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", n_boot=50, n_perm=50)
    picks = np.sort(pipeline.rng_for(0, pipeline.SEED_SAMPLE, 1).choice(100, 40, replace=False))
    expected = open_store(path)["kl_norm"].sel(condition="non_ioi").values[picks]
    np.testing.assert_array_equal(an.comparison.values["kl_norm"][1].values, expected)
    sub = to_jsonable(summary(an))["scale"]["subsample"]
    assert sub["prompts"] == {"ioi": 40, "non_ioi": 40} and sub["of"] == {"ioi": 100, "non_ioi": 100}
    assert not sub["all_prompts"] and summary(an)["n_prompts"] == {"ioi": 100, "non_ioi": 100}
    assert an.curve["n"][-1] == 40


def test_parse_memory_and_cli_flags():
    assert streaming.parse_memory("2GB") == 2 * 2**30 and streaming.parse_memory("512MB") == 512 * 2**20
    assert streaming.parse_memory(None) == streaming.DEFAULT_MEMORY
    with pytest.raises(Exception):
        streaming.parse_memory("lots")
    with pytest.raises(Exception, match="too small"):  # 144 heads' unit statistics alone take ~0.6 GB
        streaming.block_rows(7, 144, 100, streaming.parse_memory("256MB"), 600 * 2**20, 2)
    from jaxdiag.cli import _parser

    args = _parser().parse_args(["report", "x.zarr", "--out", "o", "--memory", "1GB", "--scheduler", "threads"])
    assert args.memory == "1GB" and args.scheduler == "threads" and not args.in_memory


def test_query_all_store_streams_like_in_memory(tmp_path):
    """Stores written with --query all are read at each prompt's last token, streamed as in memory."""
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=40, shifts={"kl_norm": {(2, 3): 0.03}}, seed=2)
    positions = np.arange(15)
    for v in list(ds.data_vars):
        values = np.full(ds[v].shape + (15,), np.nan, dtype=np.float32)
        values[..., 14] = ds[v].values
        values[..., 3] = 0.5  # another position, never read
        ds[v] = (ds[v].dims + ("query",), values)
    ds = ds.assign_coords(query=positions)
    ds.attrs["query_positions"] = "all"
    path = write_store(ds, tmp_path / "all.zarr")
    old, new = _summaries(path)
    _assert_close(old, {k: v for k, v in new.items() if k != "scale"})


# ---------------------------------------------------------------------------------------- taxonomy and effects

ROLES = {"induction": [(1, 2)], "sink": [(0, 0), (2, 3)], "previous_token": [(0, 1)], "duplicate_token": [(2, 0)]}


def _taxonomy_store(tmp_path, name, n=(40, 32), **kw):
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=n, conditions=("repeated", "random"), roles=ROLES, seed=7, **kw)
    return write_store(ds, tmp_path / name)


def _refuse_eager_loads(monkeypatch):
    """The in-memory loaders of the store and of the taxonomy scores raise: a streamed report must not need them."""
    import analysis.store
    import analysis.taxonomy

    def refuse(*args, **kwargs):
        raise AssertionError("the streamed report loaded the store in memory")

    monkeypatch.setattr(analysis.store, "open_store", refuse)
    monkeypatch.setattr(analysis.taxonomy, "score_samples", refuse)
    monkeypatch.setattr(analysis.taxonomy, "head_taxonomy", refuse)


def _same_taxonomy(old, new, rtol=0.0, interval_rtol=1e-9):
    """Means, SEs-free point parts and labels equal (rtol 0: bit for bit), intervals to interval_rtol."""
    assert old.sources == new.sources and old.thresholds == new.thresholds
    assert (old.labels["label"] == new.labels["label"]).all()
    for v, m in old.means.items():
        np.testing.assert_array_equal(m.n.values, new.means[v].n.values)
        np.testing.assert_allclose(new.means[v].statistic.values, m.statistic.values, rtol=rtol, atol=0)
        for side in ("low", "high"):
            np.testing.assert_allclose(getattr(new.means[v].confidence_interval, side).values,
                                       getattr(m.confidence_interval, side).values, rtol=interval_rtol, atol=1e-15)
    np.testing.assert_array_equal(old.sink_rate.statistic.values, new.sink_rate.statistic.values)


def test_taxonomy_store_streams_without_loading_it(tmp_path, monkeypatch):
    """Every real store has the taxonomy variables: the streamed report computes the section from the store's
    chunks (never the eager open_store or the in-memory score loader), bit for bit the in-memory means with units
    of one prompt, and lists nothing as computed in memory."""
    path = _taxonomy_store(tmp_path, "tax.zarr")
    old = run_analysis(open_store(path), CIRCUIT, "repeated", "random", store_path=path, **RUN)
    _refuse_eager_loads(monkeypatch)
    an = pipeline.run_analysis_streamed(path, CIRCUIT, "repeated", "random", **RUN)
    assert an.taxonomy is not None and an.comparison.scale["execution"]["in_memory"] == []
    assert an.comparison.scale["taxonomy"]["unit_prompts"] == {"repeated": 1, "random": 1}
    _same_taxonomy(old.taxonomy, an.taxonomy)
    s_old, s_new = to_jsonable(summary(old)), to_jsonable(summary(an))
    _assert_close(s_old, {k: v for k, v in s_new.items() if k != "scale"})


def test_taxonomy_effects_and_cheap_sections_match_the_in_memory_report(tmp_path, monkeypatch):
    """A store with taxonomy, exact effects and AtP estimates: every section streamed (nothing in memory), and the
    whole summary.json equals the in-memory one to rounding (units of one prompt: the same draws)."""
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=60, shifts={"kl_norm": {(2, 3): 0.03}}, roles=ROLES,
                      effects={(2, 3): -1.0, (1, 1): -0.5}, cheap_kinds=("atp_patch", "atpstar_patch"), seed=4)
    path = write_store(ds, tmp_path / "effects.zarr")
    old = to_jsonable(summary(run_analysis(open_store(path), CIRCUIT, "ioi", "non_ioi", store_path=path, **RUN)))
    _refuse_eager_loads(monkeypatch)
    an = pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", **RUN)
    new = to_jsonable(summary(an))
    assert an.comparison.scale["execution"]["in_memory"] == []
    assert new["scale"]["causal"]["streamed"] and new["scale"]["causal"]["unit_prompts"] == {"ioi": 1}
    assert old["causal"] and old["cheap_vs_exact"] and old["taxonomy"]
    from analysis.markdown import markdown

    text = markdown(an)  # each section says how it was streamed
    assert "summary.json `scale.taxonomy`" in text and "summary.json `scale.causal`" in text
    _assert_close(old, {k: v for k, v in new.items() if k != "scale"})


def test_taxonomy_block_units_point_estimates_exact_intervals_within_monte_carlo(tmp_path, monkeypatch):
    """Units of several prompts (10 and 8 here, 50 units per condition): means, defined counts, sources and labels
    as in memory (to float64 rounding: rtol 1e-12), BCa intervals within Monte-Carlo error: the in-memory and the
    unit bootstrap (400 replicates each, other draws) put every endpoint within 40% of the interval's width of each
    other and the median endpoint within 10% (measured over seeds 0-5: worst 20-28%, median 3-9%)."""
    monkeypatch.setattr(pipeline, "G_MAX", 50)
    path = _taxonomy_store(tmp_path, "blocks.zarr", n=(500, 400))
    old = head_taxonomy(open_store(path), n_boot=400, seed=2)
    new, sizes, _ = taxonomy.stream_taxonomy(streaming.open_lazy(path), n_boot=400, seed=2, memory=2**30, in_flight=2,
                                            g_max=50)
    assert sizes == {"repeated": 10, "random": 8}
    assert old.sources == new.sources and (old.labels["label"] == new.labels["label"]).all()
    gaps = []
    for v, m in old.means.items():
        np.testing.assert_array_equal(m.n.values, new.means[v].n.values)
        np.testing.assert_allclose(new.means[v].statistic.values, m.statistic.values, rtol=1e-12)
        width = (m.confidence_interval.high - m.confidence_interval.low).values
        for side in ("low", "high"):
            a = getattr(m.confidence_interval, side).values
            b = getattr(new.means[v].confidence_interval, side).values
            assert np.array_equal(np.isnan(a), np.isnan(b)), (v, side)  # NaN exactly where in memory
            gaps.append((np.abs(a - b) / width)[np.isfinite(a)])
    gaps = np.concatenate(gaps)
    assert gaps.max() <= 0.4 and np.median(gaps) <= 0.1, (gaps.max(), np.median(gaps))


def test_taxonomy_is_the_same_for_any_block_size(tmp_path, monkeypatch):
    """Blocks of one unit, of three, or all prompts at once: the same taxonomy, bit for bit."""
    monkeypatch.setattr(pipeline, "G_MAX", 10)
    path = _taxonomy_store(tmp_path, "det.zarr", n=(120, 100))
    runs = []
    for rows in (None, 12, 36):
        if rows is not None:
            monkeypatch.setattr(streaming, "block_rows", lambda *a, **k: rows)
        runs.append(taxonomy.stream_taxonomy(streaming.open_lazy(path), n_boot=99, seed=5, memory=2**30, in_flight=2,
                                             g_max=10))
    assert len({n_blocks for _, _, n_blocks in runs}) == 3
    for t, _, _ in runs[1:]:
        _same_taxonomy(runs[0][0], t, interval_rtol=0.0)
        for v, m in runs[0][0].means.items():
            np.testing.assert_array_equal(m.confidence_interval.low.values, t.means[v].confidence_interval.low.values)


def test_query_all_taxonomy_streams_like_in_memory(tmp_path):
    """--query all: a prompt's score is its mean over the defined query positions (NaN where none is), formed in
    the block tasks; the same numbers as in memory, and the defined counts count (prompt, query) entries."""
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=(30, 24), conditions=("repeated", "random"), roles=ROLES,
                      seed=3)
    rng = np.random.default_rng(0)
    for v in list(ds.data_vars):
        base = ds[v].values[..., None]
        values = (base + 0.01 * rng.standard_normal(base.shape[:-1] + (6,))).astype(np.float32)
        values[rng.random(values.shape) < 0.3] = np.nan  # undefined at some positions
        values[:, 3] = np.nan  # a prompt with no defined position
        ds[v] = (ds[v].dims + ("query",), values)
    ds = ds.assign_coords(query=np.arange(6))
    ds.attrs["query_positions"] = "all"
    path = write_store(ds, tmp_path / "all.zarr")
    old = head_taxonomy(open_store(path), n_boot=200, seed=1)
    new, _, _ = taxonomy.stream_taxonomy(streaming.open_lazy(path), n_boot=200, seed=1, memory=2**30, in_flight=2)
    assert new.query_positions == "all"
    _same_taxonomy(old, new)


@pytest.mark.parametrize("paired", [False, True])
def test_effects_block_units_exact_points_resampled_within_monte_carlo(tmp_path, monkeypatch, paired):
    """Effects with units of 10 prompts (60 units): mean effects, t-test p-values and the causal circuit as in memory
    (to rounding), the mean effect's BCa interval within 30% of its width, and the Spearman intervals of the joint
    bootstrap (AtP estimates and diagnostics) within 0.2 of the in-memory endpoints (Monte-Carlo error of two
    bootstraps with other draws; measured over seeds 0-3: worst 17-21% and 0.08-0.13)."""
    monkeypatch.setattr(pipeline, "G_MAX", 60)
    monkeypatch.setattr(streaming, "GC_MAX", 30)
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=600, shifts={"kl_norm": {(2, 3): 0.03}},
                      effects={(2, 3): -1.0, (1, 1): -0.05, (0, 2): 0.02}, cheap_kinds=("atp_patch",), seed=4,
                      pair_corr=0.5 if paired else None)
    path = write_store(ds, tmp_path / "effects_blocks.zarr")
    old = run_analysis(open_store(path), CIRCUIT, "ioi", "non_ioi", store_path=path, n_boot=400, n_perm=100, seed=3)
    new = pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", n_boot=400, n_perm=100, seed=3)
    assert new.comparison.scale["causal"]["unit_prompts"] == {"ioi": 10}
    for kind, x in old.causal.items():
        y = new.causal[kind]
        assert y.mean.n == x.mean.n and y.circuit == x.circuit and y.conditions == x.conditions
        for field in ("statistic", "t", "pvalue"):
            np.testing.assert_allclose(getattr(y.mean, field).values, getattr(x.mean, field).values, rtol=1e-9)
        width = (x.mean.confidence_interval.high - x.mean.confidence_interval.low).values
        for side in ("low", "high"):
            gap = np.abs(getattr(y.mean.confidence_interval, side) - getattr(x.mean.confidence_interval, side)).values
            assert np.all(gap <= 0.3 * width), (kind, side)
        for v, r in x.spearman.items():
            assert r.statistic == pytest.approx(y.spearman[v].statistic, rel=1e-12)
            assert abs(r.confidence_interval.low - y.spearman[v].confidence_interval.low) <= 0.2, (kind, v)
            assert abs(r.confidence_interval.high - y.spearman[v].confidence_interval.high) <= 0.2, (kind, v)
    for kind, x in old.cheap.items():
        for m, agreement in x.methods.items():
            other = new.cheap[kind].methods[m]
            np.testing.assert_allclose(other.magnitude.values, agreement.magnitude.values, rtol=1e-9)
            assert other.top_k == agreement.top_k and other.spearman.statistic == pytest.approx(agreement.spearman.statistic)
            assert abs(other.spearman.confidence_interval.low - agreement.spearman.confidence_interval.low) <= 0.2


def test_effects_are_the_same_for_any_block_size(tmp_path, monkeypatch):
    """The whole report of a store with taxonomy, effects and AtP estimates, streamed in blocks of 10 prompts (one
    unit) or all at once: the same summary.json, byte for byte."""
    monkeypatch.setattr(pipeline, "G_MAX", 20)
    ds = make_dataset(n_layers=3, n_heads=4, n_prompts=200, effects={(2, 3): -1.0}, cheap_kinds=("atp_patch",),
                      roles=ROLES, seed=6)
    path = write_store(ds, tmp_path / "effects_det.zarr")
    text = []
    for rows in (None, 10):
        if rows is not None:
            monkeypatch.setattr(streaming, "block_rows", lambda *a, **k: rows)
        an = pipeline.run_analysis_streamed(path, CIRCUIT, "ioi", "non_ioi", n_boot=99, n_perm=99)
        text.append(json.dumps(to_jsonable(summary(an)), allow_nan=False))
    assert text[0] == text[1]
