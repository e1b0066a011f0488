"""Run configs: presets, overrides, validation, circuit and builtin-model resolution."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from jaxdiag.errors import JaxdiagError
from jaxdiag.sweep.runconfig import load_config, package_data, preset_names, presets_dir

REPO = Path(__file__).resolve().parents[1]


def test_presets_are_defined_once_and_runs_holds_examples_that_differ():
    shipped = {p.name: p.read_text() for p in presets_dir().glob("*.toml")}
    examples = {p.name: p.read_text() for p in (REPO / "runs").glob("*.toml")}
    assert {"default.toml", "ioi_blog.toml", "ioi_10k.toml", "induction.toml"} <= set(shipped)
    assert examples and not set(examples.values()) & set(shipped.values()), "runs/ must not copy a preset"
    preset_configs = [load_config(preset=p.removesuffix(".toml")) for p in shipped]
    for name in examples:
        config = load_config(REPO / "runs" / name)  # every example is a valid config ...
        assert config not in preset_configs, f"runs/{name} is a preset under another name"  # ... of its own


@pytest.mark.parametrize("name", ["ioi_blog", "ioi-blog", "ioi_10k", "induction"])
def test_presets_load(name):
    config = load_config(preset=name)
    assert config.model == "gpt2" and config.query == "last" and config.precision == "highest"
    assert config.conditions in (("ioi", "non_ioi"), ("repeated", "random"))


def test_ioi_presets_say_what_the_issue_asks():
    blog, big = load_config(preset="ioi_blog"), load_config(preset="ioi_10k")
    assert blog.prompts.source == "ioi-blog" and blog.prompts.n_prompts == 50 and blog.circuit == "ioi23"
    assert (big.prompts.source, big.prompts.n_prompts, big.prompts.n_tokens) == ("ioi", 5000, 15)


def test_default_preset_names_the_builtin_induction_model():
    text = (presets_dir() / "default.toml").read_text()
    assert 'model = "builtin:induction-3l8h"' in text
    if (package_data() / "induction-3l8h").is_dir():
        config = load_config()
        assert config.prompts.source == "induction" and config.conditions == ("repeated", "random")
        from jaxdiag.checkpoint import resolve

        assert resolve(config.model).directory.is_dir() and isinstance(config.circuit, dict)
    else:
        with pytest.raises(JaxdiagError, match="no built-in model 'builtin:induction-3l8h'"):
            load_config()


def test_command_line_overrides_the_config(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "p.jsonl").write_text('{"condition": "x", "tokens": [1]}\n')
    config = load_config(preset="ioi_blog", overrides={
        "model": "distilgpt2", "prompts": "p.jsonl", "n_prompts": 7, "query": "all", "prepend_bos": False,
        "batch_size": 3, "precision": "bf16", "seed": 9, "chunk_size": None,
    })
    assert (config.model, config.query, config.prepend_bos, config.batch_size, config.precision, config.seed) == (
        "distilgpt2", "all", False, 3, "bf16", 9)
    assert config.prompts.source == "jsonl" and config.prompts.path == str(tmp_path / "p.jsonl")
    assert config.prompts.n_prompts == 7 and config.conditions is None  # the preset's conditions were ioi's
    assert json.loads(config.to_json())["prompts"] == {"source": "jsonl", "n_prompts": 7, "path": str(tmp_path / "p.jsonl")}


@pytest.mark.parametrize("body, message", [
    ('model = "gpt2"\n', "no prompt source"),
    ('[prompts]\nsource = "ioi"\n', "no model"),
    ('model = "gpt2"\nbatch_size = "8"\n[prompts]\nsource = "ioi"\n', "batch_size must be int"),
    ('model = "gpt2"\nbatch_size = 0\n[prompts]\nsource = "ioi"\n', "must be >= 1"),
    ('model = "gpt2"\nquery = "first"\n[prompts]\nsource = "ioi"\n', "query must be one of last, all"),
    ('model = "gpt2"\nprecision = "fp8"\n[prompts]\nsource = "ioi"\n', "precision must be one of"),
    ('model = "gpt2"\n[prompts]\nsource = "wiki"\n', "prompts.source must be one of"),
    ('model = "gpt2"\n[prompts]\nsource = "ioi"\nlength = 3\n', "unknown key(s) prompts.length"),
    ('model = "gpt2"\n[prompts]\nsource = "jsonl"\n', "needs prompts.path"),
    ('model = "gpt2"\n[prompts]\nsource = "jsonl"\npath = "nope.jsonl"\n', "nope.jsonl does not exist"),
    ('model = "gpt2"\nconditions = ["a"]\n[prompts]\nsource = "ioi"\n', "conditions must be two different"),
    ('model = "gpt2"\ncircuit = "ioi99"\n[prompts]\nsource = "ioi"\n', "neither ioi23 nor ioi26 nor an existing file"),
    ('model = "builtin:nothing"\n[prompts]\nsource = "ioi"\n', "no built-in model 'builtin:nothing'"),
    ('model = "gpt2"\n[prompts]\nsource = "ioi"\npairs = 1\n', "prompts.pairs must be bool"),
    ('model = "gpt2"\n[prompts]\nsource = "ioi-blog"\npairs = true\n', "pairs applies to the ioi source only"),
])
def test_bad_configs_are_refused(tmp_path, body, message):
    path = tmp_path / "run.toml"
    path.write_text(body)
    with pytest.raises(JaxdiagError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_config(str(path))


def test_config_file_or_preset_not_both_and_unknown_presets(tmp_path):
    with pytest.raises(JaxdiagError, match="not both"):
        load_config(str(tmp_path / "x.toml"), preset="ioi_blog")
    with pytest.raises(JaxdiagError, match="unknown preset 'nope'.*ioi_blog"):
        load_config(preset="nope")
    assert "ioi_blog" in preset_names()


def test_circuit_files_are_inlined_with_their_ablation(tmp_path):
    (tmp_path / "ablation.json").write_text('{"effect": {"0.1": 0.5}}')
    (tmp_path / "mine.toml").write_text('description = "x"\nablation = "ablation.json"\n[roles]\nInduction = ["1.2"]\n')
    (tmp_path / "run.toml").write_text('model = "gpt2"\ncircuit = "mine.toml"\n[prompts]\nsource = "ioi"\n')
    config = load_config(str(tmp_path / "run.toml"))
    assert config.circuit == {"name": "mine", "description": "x", "ablation": {"effect": {"0.1": 0.5}},
                              "roles": {"Induction": ["1.2"]}}


@pytest.mark.parametrize("overrides, message", [
    ({"batch_size": 0}, "--batch-size must be an integer >= 1, not 0"),
    ({"chunk_size": -1}, "--chunk-size must be an integer >= 1, not -1"),
    ({"n_prompts": 0}, "--n-prompts must be an integer >= 1, not 0"),
    ({"effects": "zero,exact"}, "--effects: unknown effect 'exact'"),
])
def test_flag_errors_name_the_flag_not_the_preset(overrides, message):
    with pytest.raises(JaxdiagError) as error:
        load_config(overrides=overrides)
    assert str(error.value).startswith(message) and ".toml" not in str(error.value)


def test_a_wrongly_typed_value_is_named_with_its_key_and_type(tmp_path):
    config = tmp_path / "big.toml"
    config.write_text('model = "builtin:induction-3l8h"\nbatch_size = "big"\n')  # and no [prompts] table
    with pytest.raises(JaxdiagError, match=r"big.toml: batch_size must be int, not 'big'"):
        load_config(str(config))


def test_paired_ioi_is_recorded_only_when_asked(tmp_path):
    """pairs = false leaves the recorded config exactly as before, so older stores still --resume."""
    path = tmp_path / "run.toml"
    path.write_text('model = "gpt2"\n[prompts]\nsource = "ioi"\nn_prompts = 4\n')
    assert "pairs" not in json.loads(load_config(str(path)).to_json())["prompts"]
    path.write_text('model = "gpt2"\n[prompts]\nsource = "ioi"\nn_prompts = 4\npairs = true\n')
    config = load_config(str(path))
    assert config.prompts.pairs and json.loads(config.to_json())["prompts"]["pairs"] is True


def test_a_model_override_brings_the_models_own_circuit(tmp_path):
    """--model replaces the preset's model; a circuit the new model ships replaces the preset's circuit."""
    config = load_config(preset="ioi_blog", overrides={"model": "builtin:ioi-4l8h"})
    assert config.circuit["name"] == "ioi-4l8h"  # inlined from builtin:ioi-4l8h/circuit.toml
    assert load_config(preset="ioi_blog", overrides={"model": "gpt2-medium"}).circuit == "ioi23"  # nothing shipped
    own = tmp_path / "mine"
    own.mkdir()
    (own / "circuit.toml").write_text('name = "mine"\nn_layers = 1\nn_heads = 2\n[roles]\n"X" = ["0.1"]\n')
    assert load_config(preset="ioi_blog", overrides={"model": str(own)}).circuit["name"] == "mine"
