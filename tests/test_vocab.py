"""Untrained token ids (jaxdiag.vocab): found from a checkpoint's trained_tokens.json or its exactly-zero
embedding rows, counted per prompt, warned about in one line and recorded by `jaxdiag run` (effects
included) and `jaxdiag.diagnose`, and refused with --strict-vocab / strict_vocab."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest

from jaxdiag import vocab
from jaxdiag.errors import JaxdiagError

ZEROED = (5, 17, 900)  # embedding rows set to exactly zero in the test checkpoint


@pytest.fixture(scope="module")
def zeroed_checkpoint(tiny_checkpoint, tmp_path_factory):
    """The tiny GPT-2 with three embedding rows exactly zero (one of them -0.0)."""
    from safetensors.numpy import load_file, save_file

    directory = tmp_path_factory.mktemp("zeroed")
    for f in tiny_checkpoint.iterdir():
        shutil.copy(f, directory / f.name)
    tensors = load_file(str(directory / "model.safetensors"))
    name = next(n for n in tensors if n.endswith("wte.weight"))
    tensors[name][list(ZEROED)] = 0.0
    tensors[name][ZEROED[1]] = -0.0
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    return directory


def _prompts(path, rows):
    path.write_text("".join(json.dumps({"condition": c, "tokens": t}) + "\n" for c, t in rows))
    return path


def test_zero_rows_are_found_by_bits_in_every_float_width(tmp_path):
    from safetensors.numpy import save_file

    for dtype in (np.float32, np.float16, np.float64):
        wte = np.ones((12, 3), dtype)
        wte[[2, 7]] = 0.0
        wte[7, 1] = -0.0
        wte[9, 2] = np.finfo(dtype).tiny  # the smallest normal number is not zero
        save_file({"transformer.wte.weight": wte, "transformer.wpe.weight": np.zeros((4, 3), dtype)},
                  str(tmp_path / "model.safetensors"))
        assert vocab.zero_embedding_rows(tmp_path).tolist() == [2, 7]
    (tmp_path / "model.safetensors").unlink()
    assert vocab.zero_embedding_rows(tmp_path) is None  # nothing to read: no claim either way


def test_a_trained_tokens_file_is_preferred_to_zero_rows(zeroed_checkpoint, tmp_path):
    ids, source = vocab.untrained_ids(zeroed_checkpoint, 1000)
    assert ids.tolist() == list(ZEROED) and source == "zero embedding rows"
    for f in zeroed_checkpoint.iterdir():
        shutil.copy(f, tmp_path / f.name)
    vocab.write_trained_tokens(tmp_path, np.arange(10, 1000))
    ids, source = vocab.untrained_ids(tmp_path, 1000)
    assert ids.tolist() == list(range(10)) and source == vocab.TRAINED_TOKENS_FILE
    (tmp_path / vocab.TRAINED_TOKENS_FILE).write_text("[1, 2]")
    with pytest.raises(JaxdiagError, match="not a trained-tokens file"):
        vocab.untrained_ids(tmp_path, 1000)


def test_prompts_are_counted_once_each_and_the_ids_named():
    found = vocab.check_prompts([[1, 5, 5, 2], [3, 4], [900, 17], []], np.array([5, 17, 900]), "zero embedding rows")
    assert (found.n_prompts, found.n_untrained_prompts, found.ids) == (4, 2, (5, 17, 900))
    line = vocab.enforce(found, strict=False, describe=lambda i: f"w{i}")
    assert "\n" not in line and line.startswith("2 of 4 prompts contain token ids this model never trained")
    assert "5 'w5'" in line and "--strict-vocab" in line
    with pytest.raises(JaxdiagError, match=r"2 of 4 prompts .* \(refused: --strict-vocab\)"):
        vocab.enforce(found, strict=True)
    assert vocab.enforce(vocab.check_prompts([[1, 2]], np.array([5]), "x"), strict=True) is None


@pytest.mark.parametrize("effects", [None, "zero"])
def test_run_warns_in_one_line_and_records_it_and_strict_refuses(zeroed_checkpoint, tmp_path, capsys, effects):
    import zarr

    from jaxdiag.cli import main

    rows = [("a", [1, 2, 3, 4]), ("a", [1, 5, 3, 4]), ("b", [6, 7, 8, 9]), ("b", [6, 900, 8, 17])]
    prompts = _prompts(tmp_path / "p.jsonl", rows)
    base = ["run", "--model", str(zeroed_checkpoint), "--prompts", str(prompts), "--quiet"]
    if effects:  # effects need a target: every prompt gets one (the same sweep hook counts it)
        prompts.write_text("".join(json.dumps({"condition": c, "tokens": t, "target": 3}) + "\n" for c, t in rows))
        base += ["--effects", effects]
    assert main([*base, "--out", str(tmp_path / "s.zarr")]) == 0
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert len(err) == 1 and err[0].startswith("jaxdiag: warning: 2 of 4 prompts contain token ids"), err
    attrs = zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs
    assert attrs["untrained_prompts"] == 2 and attrs["untrained_token_ids"] == [5, 17, 900]

    assert main([*base, "--strict-vocab", "--out", str(tmp_path / "strict.zarr")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("jaxdiag: error: 2 of 4 prompts") and "--strict-vocab" in err[0]
    assert not (tmp_path / "strict.zarr").exists()


def test_run_on_trained_ids_only_is_silent_and_records_zero(zeroed_checkpoint, tmp_path, capsys):
    import zarr

    from jaxdiag.cli import main

    prompts = _prompts(tmp_path / "p.jsonl", [("a", [1, 2, 3]), ("b", [4, 6, 7])])
    assert main(["run", "--model", str(zeroed_checkpoint), "--prompts", str(prompts), "--quiet", "--strict-vocab",
                 "--out", str(tmp_path / "s.zarr")]) == 0
    assert capsys.readouterr().err.strip() == ""
    assert zarr.open_group(str(tmp_path / "s.zarr"), mode="r").attrs["untrained_prompts"] == 0


def test_diagnose_and_effects_warn_record_and_refuse_with_strict_vocab(zeroed_checkpoint):
    import jaxdiag

    model = jaxdiag.load(str(zeroed_checkpoint))
    with pytest.warns(vocab.UntrainedTokensWarning, match="1 of 2 prompts contain token ids"):
        ds = jaxdiag.diagnose(model, [[1, 2, 3], [1, 17, 3]], progress=False)
    assert ds.attrs["untrained_prompts"] == 1 and ds.attrs["untrained_token_ids"] == [17]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert jaxdiag.diagnose(model, [[1, 2, 3]], progress=False).attrs["untrained_prompts"] == 0
    with pytest.raises(JaxdiagError, match=r"\(refused: --strict-vocab\)"):
        jaxdiag.diagnose(model, [[1, 17, 3]], strict_vocab=True, progress=False)
    with pytest.warns(vocab.UntrainedTokensWarning, match="1 of 2 prompts"):
        ds = jaxdiag.effects(model, [[1, 2, 3], [1, 900, 3]], target=3, kinds=("zero",), progress=False)
    assert ds.attrs["untrained_prompts"] == 1
    with pytest.raises(JaxdiagError, match=r"\(refused: --strict-vocab\)"):
        jaxdiag.effects(model, [[1, 17, 3]], target=3, strict_vocab=True, progress=False)
