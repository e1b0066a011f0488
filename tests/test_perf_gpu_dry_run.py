"""The GPU benchmark's dry run: ``python -m benchmarks.gpu --dry-run`` takes the device run's code path
on the CPU (2-layer model, tiny shapes), so the prepared device command cannot rot between the sessions
that are lent a GPU."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import tarfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# the diagnostics and the head-taxonomy scores but log_z (attention probabilities do not determine it)
VARIABLES = {"kl", "kl_norm", "chi", "entropy", "max_attn", "bos_attn", "z_excess", "prev_attn", "self_attn", "dup_attn",
             "induction_attn"}


def test_gpu_benchmark_dry_run(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu", "--dry-run", "--out-dir", str(tmp_path)], cwd=REPO,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "gpu_dry_run.json").read_text())
    markdown = (tmp_path / "GPU_DRY_RUN.md").read_text()
    assert results["profile"] == "dry" and "--dry-run" in results["command"] and results["command"] in markdown
    assert results["machine"]["cpu_count"] and results["date"]

    # every point of every section ran: none failed, none was cut by its time box
    for name in ("jax", "effects", "torch", "drift"):
        rows = results["sections"][name]
        assert rows, name
        bad = [(r["point"]["kind"], r["result"]) for r in rows if "error" in r["result"] or "skipped" in r["result"]]
        assert not bad, (name, bad)
    kinds = {r["point"]["kind"] for rows in results["sections"].values() if isinstance(rows, list) for r in rows}
    assert {"probe", "gemm", "jaxdiag_step", "profile_step", "effects_jaxdiag", "transformers", "transformerlens",
            "effects_transformerlens", "precision_drift"} <= kinds

    s = results["summary"]
    assert s["best_short_prompts_per_s"]["bf16"] > 0
    assert all(rate > 0 for rate in s["baselines_best_prompts_per_s"].values())
    assert set(s["xla_gemm_tflops"]) == set(s["torch_gemm_tflops"]) == {"bf16", "default", "highest"}
    assert all(d["tflops"] > 0 and d["of_gemm"] > 0 for d in s["diagnostics"])
    assert s["head_effects_per_s"]["patch+atp_patch+atpstar_patch@highest"] > 0
    assert s["transformerlens_head_effects_per_s"] > 0

    timed = results["sections"]["process"]["runs"]["timed"]
    assert "error" not in timed and timed["seconds"] > 0 and timed["reported_prompts_per_s"] > 0

    # Drift from the float64 reference (transformers' GPT-2 in float64) on the trained models: float32
    # on the CPU agrees with it to rounding, bf16 moves every diagnostic visibly but boundedly.
    assert set(s["drift"]) == {"builtin:ioi-4l8h", "builtin:induction-3l8h"}
    for model, by_precision in s["drift"].items():
        assert set(by_precision["highest"]) == VARIABLES, model
        assert all(v < 1e-5 for v in by_precision["highest"].values()), (model, by_precision["highest"])
        assert all(math.isfinite(v) and 1e-4 < v < 0.1 for v in by_precision["bf16"].values()), (model, by_precision["bf16"])
    for row in results["sections"]["drift"]:  # the trained heads attend sharply: not the near-uniform random case
        assert row["result"]["reference"]["max_attn_mean"] > 0.15, row["point"]["checkpoint"]
        assert all(d["nan_mismatches"] == 0 for by_name in row["result"]["drift"].values() for d in by_name.values())

    with tarfile.open(tmp_path / "gpu_profile.tar.gz") as archive:
        assert any(name.endswith(".xplane.pb") for name in archive.getnames())
    for heading in ("## Goals", "## Diagnostics step", "## Baselines", "## Causal effects", "## Whole process",
                    "## Precision drift"):
        assert heading in markdown
