"""Bad input found before any work: the store's place (a foreign folder to --overwrite, a folder that cannot be
written) before the model is even looked up, and a checkpoint's config.json of the wrong shape or types, in one
line. (The analysis side's --out checks: tests/test_analysis_report.py.)"""

from __future__ import annotations

import json

import pytest

from jaxdiag.cli import main
from jaxdiag.errors import JaxdiagError
from jaxdiag.models.load import read_config

MISSING_MODEL = "/nonexistent/model"  # were the model looked up first, its error would come instead


def run_error(capsys, *args: str) -> str:
    assert main(["run", "--model", MISSING_MODEL, "--quiet", "--no-compile-cache", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("jaxdiag: error:") and err.count("\n") == 1
    return err


def test_overwrite_of_a_folder_that_is_not_a_store_fails_first(tmp_path, capsys):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "keep.txt").write_text("mine")
    assert "not a Zarr store" in run_error(capsys, "--out", str(notes), "--overwrite")
    assert (notes / "keep.txt").read_text() == "mine" and len(list(notes.iterdir())) == 1


def test_out_in_a_folder_that_cannot_be_written_fails_first(tmp_path, capsys):
    """A store under a file: its folder cannot be made (permission bits are not tested: the suite may run as
    root, which os.access lets write anywhere)."""
    (tmp_path / "file").write_text("")
    err = run_error(capsys, "--out", str(tmp_path / "file" / "run.zarr"))
    assert "its folder" in err and "is not a folder" in err and str(tmp_path / "file") in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_the_model_is_reached_once_the_place_is_fine(tmp_path, capsys):
    assert "cannot write" not in run_error(capsys, "--out", str(tmp_path / "run.zarr"))
    assert not (tmp_path / "run.zarr").exists()


BERT = {"model_type": "bert", "vocab_size": 9, "hidden_size": 8, "num_hidden_layers": 2, "num_attention_heads": 2,
        "intermediate_size": 8}


@pytest.mark.parametrize("body, message", [
    ([1, 2, 3], "a model config is a JSON object, not list"),
    ({"model_type": "gpt2", "n_layer": "three"}, 'n_layer must be int, not "three"'),
    ({"model_type": "gpt2", "n_head": True}, "n_head must be int, not true"),
    ({"model_type": "gpt2", "layer_norm_epsilon": "small"}, "layer_norm_epsilon must be float"),
    ({**BERT, "num_hidden_layers": "three"}, "must be int"),
    ({**BERT, "model_type": "albert", "num_hidden_groups": "one"}, "wrong type"),
])
def test_config_json_of_the_wrong_shape_or_types_is_one_line(tmp_path, body, message):
    (tmp_path / "config.json").write_text(json.dumps(body))
    with pytest.raises(JaxdiagError) as error:
        read_config(tmp_path)
    assert message in str(error.value) and "\n" not in str(error.value) and "config.json" in str(error.value)


def test_well_typed_configs_still_load(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_layer": 3, "layer_norm_epsilon": 1}))
    assert read_config(tmp_path).n_layer == 3
