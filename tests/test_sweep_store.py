"""The store matches CONTRACT.md, and the CLI refuses bad input with one line, exit 2, nothing written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr
import zarr

import jaxdiag
from jaxdiag.cli import main
from jaxdiag.probes.diagnostics import DIAGNOSTICS
from tests.sweep_helpers import TEXT_MODEL, TOKEN_MODEL, save_tiny_model


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sweep-models")
    return {"text": save_tiny_model(root / "text", **TEXT_MODEL), "token": save_tiny_model(root / "token", seed=1, **TOKEN_MODEL)}


@pytest.fixture(scope="module")
def blog_store(models, tmp_path_factory) -> tuple:
    out = tmp_path_factory.mktemp("blog") / "blog.zarr"
    assert main(["run", "--preset", "ioi_blog", "--model", str(models["text"]), "--n-prompts", "6",
                 "--batch-size", "4", "--chunk-size", "4", "--out", str(out), "--quiet"]) == 0
    return out, xr.open_zarr(out, chunks=None)


def _run(capsys, *args) -> tuple[int, str]:
    code = main(["run", *map(str, args), "--quiet"])
    return code, capsys.readouterr().err


def test_store_layout_matches_the_contract(blog_store, models):
    path, ds = blog_store
    assert dict(ds.sizes) == {"condition": 2, "prompt": 6, "layer": 2, "head": 4, "position": 15}
    assert list(ds["condition"].values) == ["ioi", "non_ioi"]
    for name in DIAGNOSTICS:
        assert ds[name].dims == ("condition", "prompt", "layer", "head") and ds[name].dtype == np.float32
    assert ds["tokens"].dims == ("condition", "prompt", "position") and ds["tokens"].dtype == np.int32
    assert ds["n_tokens"].dims == ("condition", "prompt") and (ds["n_tokens"].values == 15).all()
    for name in ("text", "tokens", "n_tokens", "template", "io_name", "s_name", "c_name"):
        assert name in ds.coords
    attrs = ds.attrs
    assert attrs["schema_version"] == 3 and attrs["complete"] is True
    assert attrs["jaxdiag_version"] == jaxdiag.__version__ and attrs["model"] == str(models["text"])
    assert len(attrs["weights_sha256"]) == 64
    assert (attrs["n_layers"], attrs["n_heads"], attrs["prepend_bos"], attrs["model_type"]) == (2, 4, True, "gpt2")
    assert (attrs["query_positions"], attrs["precision"], attrs["seed"]) == ("last", "highest", 0)
    assert attrs["created"].endswith("Z") and "T" in attrs["created"]
    config = json.loads(attrs["config"])
    assert config["prompts"] == {"source": "ioi-blog", "n_prompts": 6} and config["circuit"] == "ioi23"
    assert config["conditions"] == ["ioi", "non_ioi"]
    group = zarr.open_group(str(path), mode="r")
    assert group.metadata.zarr_format == 3 and group.metadata.consolidated_metadata is not None
    assert group["kl"].chunks == (1, 4, 2, 4)  # chunked along prompt only
    assert not (path / ".jaxdiag-progress").exists()


def test_store_values_are_the_models_diagnostics(blog_store, models):
    _, ds = blog_store
    loaded = jaxdiag.load(str(models["text"]))
    for condition in ("ioi", "non_ioi"):
        texts = [str(t) for t in ds["text"].sel(condition=condition).values]
        assert [loaded.encode(t) for t in texts] == ds["tokens"].sel(condition=condition).values.tolist()
        expected = jaxdiag.diagnose(loaded, texts)
        for name in DIAGNOSTICS:
            np.testing.assert_allclose(ds[name].sel(condition=condition).values, expected[name].values,
                                       rtol=1e-5, atol=1e-6, equal_nan=True)


def test_unequal_conditions_are_nan_padded_and_query_all_matches_last(tmp_path, models, capsys):
    prompts = tmp_path / "p.jsonl"
    rows = [{"condition": "a", "tokens": list(range(1, 4 + i)), "tag": f"a{i}"} for i in range(5)]
    rows += [{"condition": "b", "tokens": list(range(10, 12 + i)), "weight": i / 2} for i in range(3)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    stores = {}
    for query in ("last", "all"):
        stores[query] = tmp_path / f"{query}.zarr"
        code, err = _run(capsys, "--preset", "ioi_blog", "--model", models["token"], "--prompts", prompts,
                         "--query", query, "--batch-size", "2", "--chunk-size", "2", "--out", stores[query])
        assert code == 0, err
    last, full = (xr.open_zarr(stores[q], chunks=None) for q in ("last", "all"))
    assert full["kl"].dims == ("condition", "prompt", "layer", "head", "query") and full.sizes["query"] == 7
    assert list(full["query"].values) == list(range(7))
    b = last.sel(condition="b")
    assert list(b["n_tokens"].values) == [2, 3, 4, 0, 0]
    assert (b["tokens"].values[3:] == -1).all() and (b["tokens"].values[0, 2:] == -1).all()
    assert list(b["text"].values) == [""] * 5
    assert np.isnan(b["kl"].values[3:]).all() and not np.isnan(b["kl"].values[:3]).any()
    assert list(b["tag"].values) == [""] * 5 and list(last["tag"].sel(condition="a").values) == [f"a{i}" for i in range(5)]
    np.testing.assert_array_equal(b["weight"].values, [0.0, 0.5, 1.0, np.nan, np.nan])
    for condition in ("a", "b"):
        n_tokens = last["n_tokens"].sel(condition=condition).values
        for i, n in enumerate(n_tokens[n_tokens > 0]):
            row = full.sel(condition=condition).isel(prompt=i)
            for name in DIAGNOSTICS:
                np.testing.assert_allclose(row[name].isel(query=n - 1).values,
                                           last[name].sel(condition=condition).isel(prompt=i).values,
                                           rtol=1e-5, atol=1e-6, equal_nan=True)
                assert np.isnan(row[name].values[..., n:]).all()  # positions past the prompt
            assert np.isnan(row["kl_norm"].isel(query=0).values).all()  # n = 1: undefined

    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))  # the prompt set changed
    code, err = _run(capsys, "--preset", "ioi_blog", "--model", models["token"], "--prompts", prompts,
                     "--query", "last", "--batch-size", "2", "--chunk-size", "2", "--out", stores["last"], "--resume")
    assert code == 2 and "different prompt set" in err


def test_existing_store_needs_resume_or_overwrite(blog_store, models, capsys, tmp_path):
    path, _ = blog_store
    args = ["--preset", "ioi_blog", "--model", models["text"], "--n-prompts", "6", "--batch-size", "4",
            "--chunk-size", "4", "--out", path]
    code, err = _run(capsys, *args)
    assert code == 2 and err.startswith("jaxdiag: error:") and err.count("\n") == 1 and "--overwrite" in err
    code, err = _run(capsys, *args[:-5], "8", "--chunk-size", "4", "--out", path, "--resume")
    assert code == 2 and "different run config (batch_size differs)" in err
    code, err = _run(capsys, *args, "--resume")  # already complete: nothing to do, still fine
    assert code == 0
    copy = tmp_path / "copy.zarr"
    (copy / "zarr.json").parent.mkdir()
    (copy / "zarr.json").write_text("{}")
    code, err = _run(capsys, *args[:-1], copy, "--overwrite")
    assert code == 0 and xr.open_zarr(copy).attrs["complete"] is True
    not_a_store = tmp_path / "notes"
    not_a_store.mkdir()
    code, err = _run(capsys, *args[:-1], not_a_store, "--overwrite")
    assert code == 2 and "not a Zarr store" in err


@pytest.mark.parametrize("problem, message", [
    ("toml", "not valid TOML"),
    ("key", "unknown key(s) colour"),
    ("vocab", "token id 5000 outside the vocabulary"),
    ("long", "more than the model's context window"),
    ("json", "line 2: not valid JSON"),
    ("conditions", "conditions x named in the run config are not in the prompt set"),
    ("model", "no config.json"),
])
def test_bad_input_fails_first_with_one_line_and_leaves_nothing(tmp_path, models, capsys, problem, message):
    prompts = tmp_path / "p.jsonl"
    lines = ['{"condition": "a", "tokens": [1, 2, 3]}', '{"condition": "b", "tokens": [4, 5]}']
    if problem == "vocab":
        lines.append('{"condition": "a", "tokens": [1, 5000]}')
    if problem == "long":
        lines.append(json.dumps({"condition": "a", "tokens": [1] * 65}))
    if problem == "json":
        lines[1] = '{"condition": "b", tokens: [4]}'
    prompts.write_text("\n".join(lines) + "\n")
    model = tmp_path if problem == "model" else models["token"]
    body = {"toml": "model = \n", "key": f'model = "{model}"\ncolour = "red"\n'}.get(problem, f'model = "{model}"\n')
    if problem == "conditions":
        body += 'conditions = ["a", "x"]\n'
    config = tmp_path / "run.toml"
    config.write_text(body + f'[prompts]\nsource = "jsonl"\npath = "{prompts.name}"\n')
    out = tmp_path / "out.zarr"
    code, err = _run(capsys, config, "--out", out)
    assert code == 2 and err.startswith("jaxdiag: error:") and err.count("\n") == 1
    assert message in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jsonl", "run.toml"]  # no store, no temp dir


def test_info_describes_the_store(blog_store, capsys):
    path, _ = blog_store
    assert main(["info", str(path)]) == 0
    out = capsys.readouterr().out
    for expected in ("status: complete", "condition=2", "prompt=6", "layer=2", "head=4", "ioi: 6 prompts, 15-15 tokens",
                     "non_ioi: 6 prompts", "weights_sha256:", "query_positions: last", "config (digest",
                     "  prompts: source=ioi-blog, n_prompts=6", "  circuit: ioi23"):
        assert expected in out
    assert main(["info", str(path.parent / "nothing.zarr")]) == 2
    assert "not a Zarr store" in capsys.readouterr().err


def test_report_errors_are_one_line(tmp_path, capsys):
    assert main(["report", str(tmp_path / "missing.zarr"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxdiag: error:") and err.count("\n") == 1
