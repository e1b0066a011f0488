"""How a checkpoint becomes a model (:mod:`jaxdiag.models.load`). The shapes-only model the loader
fills (``Family.abstract``) is the model ``nnx.eval_shape`` of its constructor gives, for every family
and option the parity tests cover: the same graph (modules, static attributes, shared ALBERT layers)
and the same parameter paths, shapes and dtypes, with no array allocated; the initialisers still
give a random model its values outside it. Every parameter the loader places is its stored tensor
bit for bit (transposed, cast), whichever way it went to the device (the reused host buffer, or a
large tensor's own), read from shards, float32 or bfloat16."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from jaxdiag.models.family import ONES, ZEROS, normal, shapes_only
from jaxdiag.models.gpt2 import GPT2, GPT2Config
from jaxdiag.models.registry import registered
from tests import families
from tests import test_families_encoders as encoders


def _hf_config(config_name: str, small: dict, extra: dict) -> dict:
    import transformers

    return getattr(transformers, config_name)(**(small | extra)).to_dict()


CONFIGS = {f"decoder-{case}": (families.SMALL, spec[0], spec[2]) for case, spec in families.CASES.items()} | {
    f"encoder-{case}": (encoders.SMALL, spec[0], spec[2])
    for case, spec in (encoders.CASES | encoders.EFFECT_CASES).items()}


def _configs():
    yield "gpt2", GPT2Config(vocab_size=97, n_positions=64, n_embd=32, n_layer=2, n_head=4)
    for name, (small, config_name, extra) in CONFIGS.items():
        raw = _hf_config(config_name, small, extra)
        yield name, registered(raw["model_type"]).config.from_dict(raw)


def _untraced(*args, **kwargs):
    raise AssertionError("Family.abstract traced or ran an initialiser")


@pytest.mark.parametrize("precision", ["highest", "bf16"])
def test_abstract_model_is_eval_shape_of_the_constructor_without_tracing(precision, monkeypatch):
    import jax._src.random

    for name, config in _configs():
        model = registered(config.model_type).model
        with monkeypatch.context() as patch:  # no random initialiser is run or traced, nothing is eval_shape'd
            patch.setattr(jax._src.random, "normal", _untraced)
            patch.setattr(jax, "eval_shape", _untraced)
            abstract = model.abstract(config, precision=precision)
        traced = nnx.eval_shape(lambda model=model, config=config: model(config, precision=precision,
                                                                       rngs=nnx.Rngs(0)))
        (graph, state), (traced_graph, traced_state) = nnx.split(abstract), nnx.split(traced)
        assert graph == traced_graph, name
        flat, traced_flat = nnx.to_flat_state(state), nnx.to_flat_state(traced_state)
        assert [p for p, _ in flat] == [p for p, _ in traced_flat], name
        for (path, var), (_, ref) in zip(flat, traced_flat):
            value = var.get_value()
            assert type(value) is jax.ShapeDtypeStruct, (name, path, type(value))  # nothing allocated
            assert (value.shape, value.dtype) == (ref.shape, ref.dtype), (name, path)


def test_initialisers_give_values_outside_shapes_only():
    key = jax.random.key(3)
    np.testing.assert_array_equal(normal(0.02)(key, (4, 5)), nnx.initializers.normal(0.02)(key, (4, 5)))
    np.testing.assert_array_equal(ZEROS(None, (3,)), np.zeros(3, np.float32))
    np.testing.assert_array_equal(ONES(None, (3,)), np.ones(3, np.float32))
    with shapes_only():
        assert normal(0.02)(key, (4, 5)) == jax.ShapeDtypeStruct((4, 5), np.float32)
    model = GPT2(GPT2Config(vocab_size=97, n_positions=16, n_embd=8, n_layer=1, n_head=2), rngs=nnx.Rngs(0))
    leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
    assert all(isinstance(v, jax.Array) for v in leaves)
    assert float(np.std(np.asarray(model.wte.embedding[...]))) > 0.01  # random, not shapes


@pytest.mark.parametrize("stored, precision", [("float32", "highest"), ("bfloat16", "bf16"), ("bfloat16", "highest")])
def test_every_parameter_is_its_stored_tensor_bit_for_bit(tmp_path, monkeypatch, stored, precision):
    import jaxdiag
    from jaxdiag.models import load

    torch_model, _, _ = families.build(tmp_path, "llama-bias")  # q/k/v/o and MLP biases, norms, untied head
    directory = tmp_path / "shards"
    torch_model.to(getattr(torch, stored)).save_pretrained(directory, max_shard_size="20KB")
    monkeypatch.setattr(load, "STAGING_BYTES", 3000)  # the larger tensors through their own buffer too
    model = jaxdiag.load(str(directory), precision=precision).model
    flat = dict(nnx.to_flat_state(nnx.state(model, nnx.Param)))
    assert len(flat) == len(torch_model.state_dict())
    for name, tensor in torch_model.state_dict().items():
        *module, leaf = name.removeprefix("model.").split(".")
        linear = leaf == "weight" and tensor.ndim == 2 and "embed" not in name
        key = (*(int(p) if p.isdigit() else p for p in module),
               "kernel" if linear else "embedding" if "embed" in name else "scale" if leaf == "weight" else "bias")
        ours = np.asarray(flat[key].get_value())
        expected = tensor.float().numpy()
        assert str(ours.dtype) == ("bfloat16" if precision == "bf16" else "float32"), name
        np.testing.assert_array_equal(ours.astype(np.float32), expected.T if linear else expected, err_msg=name)
