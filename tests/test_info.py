"""`jaxdiag info STORE`: a readable summary (no multi-KB config line) and `--json` with everything."""

from __future__ import annotations

import json
import shutil

import pytest
import zarr

from jaxdiag.cli import main
from jaxdiag.sweep.store import PROGRESS_DIR, describe
from jaxdiag.schema import DIAGNOSTICS, TAXONOMY
from tests.sweep_helpers import TOKEN_MODEL, save_tiny_model


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """An induction store of a tiny model whose run config holds a circuit file (kept inline, tables and all)."""
    root = tmp_path_factory.mktemp("info")
    model = save_tiny_model(root / "model", **TOKEN_MODEL)
    (root / "run.toml").write_text(
        f'model = "{model}"\nbatch_size = 4\nchunk_size = 2\nconditions = ["repeated", "random"]\n'
        'circuit = "builtin:induction-3l8h/circuit.toml"\n'
        '[prompts]\nsource = "induction"\nn_prompts = 3\nsegment_length = 4\n')
    out = root / "induction.zarr"
    assert main(["run", str(root / "run.toml"), "--out", str(out), "--quiet"]) == 0
    return out


def test_info_text_is_a_readable_summary(store, capsys):
    assert main(["info", str(store)]) == 0
    text = capsys.readouterr().out
    assert text == describe(store) + "\n"
    lines = text.splitlines()
    assert max(map(len, lines)) <= 200, max(lines, key=len)
    config = json.loads(zarr.open_group(str(store), mode="r").attrs["config"])
    assert len(json.dumps(config["circuit"])) > 1000  # what the old one-line `config: {...}` printed
    for expected in ("status: complete", "dims: condition=2, prompt=3, layer=2, head=4", "conditions:",
                     "  repeated: 3 prompts, 9-9 tokens", "  random: 3 prompts, 9-9 tokens",
                     f"model: {config['model']} (gpt2, 2 layers x 4 heads)", "diagnostics: " + ", ".join(DIAGNOSTICS),
                     "taxonomy: " + ", ".join(TAXONOMY), "  weights_sha256: ", "  prompts_sha256: ",
                     "  query_positions: last", "  precision: highest", "  seed: 0", "  backend: cpu",
                     "config (digest", "  prompts: source=induction, n_prompts=3, segment_length=4",
                     "  batch_size: 4", "  conditions: repeated, random", "  circuit: induction-3l8h (inline circuit file)"):
        assert expected in text, expected
    assert "INCOMPLETE" not in text and "ablation" not in text


def test_info_json_holds_everything(store, capsys):
    assert main(["info", str(store), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    attrs = dict(zarr.open_group(str(store), mode="r").attrs)
    assert out["attrs"]["config"] == json.loads(attrs["config"])  # the full config, circuit tables included
    assert {k: v for k, v in out["attrs"].items() if k != "config"} == {k: v for k, v in attrs.items() if k != "config"}
    assert out["complete"] is True and "chunks_written" not in out
    assert out["dims"] == {"condition": 2, "prompt": 3, "layer": 2, "head": 4, "position": 9}
    assert out["conditions"] == [{"name": "repeated", "prompts": 3, "min_tokens": 9, "max_tokens": 9},
                                 {"name": "random", "prompts": 3, "min_tokens": 9, "max_tokens": 9}]
    assert set(DIAGNOSTICS) | set(TAXONOMY) <= set(out["variables"])
    assert out["metadata_coordinates"] == ["segment_length"]


def test_info_of_an_incomplete_store_says_how_to_resume(store, tmp_path, capsys):
    copy = tmp_path / "partial.zarr"
    shutil.copytree(store, copy)
    zarr.open_group(str(copy), mode="r+").attrs["complete"] = False
    (copy / PROGRESS_DIR).mkdir()
    (copy / PROGRESS_DIR / "0-0").write_bytes(b"")
    text = describe(copy)
    assert "status: INCOMPLETE (1 chunks written)" in text
    assert f"--out {copy} --resume" in text and "conditions (prompts written so far):" in text
    assert main(["info", str(copy), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["complete"] is False and out["chunks_written"] == 1


def test_info_errors_are_one_line(tmp_path, capsys):
    for args in (["info", str(tmp_path / "none.zarr")], ["info", str(tmp_path / "none.zarr"), "--json"]):
        assert main(args) == 2
        err = capsys.readouterr().err
        assert err.startswith("jaxdiag: error:") and err.count("\n") == 1 and "not a Zarr store" in err
