"""Shared fixtures: random GPT-2 checkpoints written in Hugging Face format by transformers itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_CONFIG = dict(vocab_size=1000, n_positions=64, n_embd=32, n_layer=2, n_head=4, bos_token_id=0, eos_token_id=0)


def write_torch_checkpoint(directory: Path, seed: int = 0, qk_gain: float = 1.0, **config) -> Path:
    """A randomly initialised ``GPT2LMHeadModel`` saved with ``save_pretrained`` (safetensors).

    ``qk_gain`` scales the query and key projections so that attention is far from uniform (GPT-2's
    init gives almost uniform patterns in small widths, where every diagnostic would be near 0).
    """
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(GPT2Config(**config)).eval()
    # Non-trivial LayerNorm affine parameters so the parity tests exercise them (init is 1 and 0).
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "ln" in name:
                param.add_(0.1 * torch.randn_like(param))
            if "c_attn" in name:
                width = param.shape[-1] // 3
                param[..., : 2 * width].mul_(qk_gain)
    model.save_pretrained(directory)
    return directory


# The files whose tests take minutes in all (benchmark smokes in subprocesses, module fixtures that write
# stores), roughly longest first (`pytest --durations`, 2026-12-07). scripts/test.sh runs `-n 2 --dist loadfile`:
# xdist hands whole files to the two workers in collection order, so each module fixture is built once (under
# plain `load` both workers built e.g. test_effects_sweep's store), and starting the long files first leaves only
# short ones for the end, when one worker would otherwise wait for the other.
HEAVY_FIRST = (
    "test_perf_benchmark_smoke.py", "test_effects_sweep.py", "test_mesh.py", "test_effects_encoders.py",
    "test_perf_gpu_dry_run.py", "test_ioi_end_to_end.py", "test_effects_families.py", "test_core_parity.py",
    "test_induction_end_to_end.py", "test_ioi_model.py", "test_sweep_parallel.py", "test_atp_parity.py",
    "test_induction_model.py", "test_analysis_taxonomy.py", "test_notebook_api.py", "test_sweep_store.py",
    "test_analysis_scale.py", "test_store_urls.py", "test_analysis_causal.py", "test_analysis_cheap.py",
)


def pytest_collection_modifyitems(config, items) -> None:
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: the rest keep their order


@pytest.fixture(scope="session", autouse=True)
def _private_compile_cache(tmp_path_factory):
    """The commands' persistent compilation cache (jaxdiag.sweep.compile_cache) in this session's temp
    directory, inherited by the CLI subprocesses: tests never read or fill the user's cache."""
    os.environ["JAXDIAG_CACHE_DIR"] = str(tmp_path_factory.mktemp("xla-cache"))


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    return write_torch_checkpoint(tmp_path_factory.mktemp("tiny-gpt2"), qk_gain=6.0, **TINY_CONFIG)
