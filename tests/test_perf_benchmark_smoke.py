"""The benchmark command runs end to end (tiny model) and writes RESULTS.md and results.json."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def run_smoke(module: str, out_dir: Path) -> None:
    """``python -m benchmarks.<module> --smoke --out-dir out_dir`` in a fresh process; it must succeed."""
    proc = subprocess.run([sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out-dir", str(out_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_benchmark_command_runs_end_to_end(tmp_path):
    run_smoke("run", tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())
    markdown = (tmp_path / "RESULTS.md").read_text()

    assert results["profile"] == "smoke" and "--smoke" in results["command"]
    assert results["machine"]["cpu_count"] and results["date"] and len(results["load_avg_start"]) == 3
    tools = results["short"]["tools"]
    for name in ("jaxdiag", "transformers", "transformerlens", "jaxdiag_exact_length"):
        assert "error" not in tools[name], (name, tools[name].get("error"))
        assert tools[name]["prompts_per_s"] > 0 and tools[name]["peak_rss_mb"] > 0
    summary = results["summary"]
    assert summary["ceiling_prompts_per_s"] > 0 and summary["speedup_vs_faster_pytorch_tool"] > 0
    assert all("error" not in r for row in results["long"] for r in row["tools"].values())
    assert {(r["query"], r["attention"]) for r in results["memory"]} == {
        (q, a) for q in ("last", "all") for a in ("direct", "streaming")
    }
    # Every device count computes the same numbers.
    digests = {r["result_sha256"] for r in results["scale"]}
    assert len(digests) == 1 and [r["devices"] for r in results["scale"]] == [1, 2]
    # Other families: a Pythia-shaped and a Llama-style row, both tools measured
    assert [r["family"] for r in results["families"]] == ["pythia-160m", "llama-style"]
    assert all("error" not in r and r["tools"][t]["prompts_per_s"] > 0
               for r in results["families"] for t in ("jaxdiag", "transformers"))
    for heading in ("## Targets", "## Short prompts", "## Long prompts", "## Peak memory", "## Scale-out", "## GPU",
                    "## Other families"):
        assert heading in markdown
    assert results["command"] in markdown


def test_effects_benchmark_runs_end_to_end(tmp_path):
    run_smoke("effects", tmp_path)
    results = json.loads((tmp_path / "effects_smoke.json").read_text())
    markdown = (tmp_path / "EFFECTS_SMOKE.md").read_text()
    assert results["machine"]["cpu_count"] and "--smoke" in results["command"] and results["command"] in markdown
    n_heads = results["model"]["n_layer"] * results["model"]["n_head"]
    assert results["transformerlens"]["shape"] == [results["model"]["n_layer"], results["model"]["n_head"]]
    for row in ("diagnostics", "patch", "atp_patch", "atpstar_patch", "zero+mean+patch"):
        assert results["jaxdiag"][row]["prompts_per_s"] > 0
    patch = results["jaxdiag"]["patch"]
    assert abs(patch["head_effects_per_s"] - patch["prompts_per_s"] * n_heads) < 1e-6 * patch["head_effects_per_s"]
    summary = results["summary"]
    assert summary["patch_speedup_vs_transformerlens"] > 0 and summary["flop_ratio_one_forward_per_head_vs_jaxdiag"] > 1


def test_taxonomy_benchmark_runs_end_to_end(tmp_path):
    run_smoke("taxonomy", tmp_path)
    results = json.loads((tmp_path / "taxonomy_smoke.json").read_text())
    assert results["machine"]["cpu_count"] and results["command"] in (tmp_path / "TAXONOMY_SMOKE.md").read_text()
    for row in results["rows"]:
        assert all(s > 0 for s in row["seconds"].values()) and row["overhead"] > -1


def test_whole_process_benchmark_runs_end_to_end(tmp_path):
    run_smoke("process", tmp_path)
    results = json.loads((tmp_path / "process_smoke.json").read_text())
    markdown = (tmp_path / "PROCESS_SMOKE.md").read_text()
    assert results["command"] in markdown and results["machine"]["cpu_flags"] in markdown
    for tool, runs in results["whole_process"].items():
        assert runs and all("error" not in r and r["seconds"] > 0 for r in runs), (tool, runs)
    assert set(results["summary"]["startup_s"]) == {"cold cache", "warm cache", "no cache"}
    summary = results["summary"]
    assert summary["speedup_vs_faster_pytorch_tool"] > 0 and summary["ceiling_prompts_per_s"] > 0
    # every round measured its own ceiling right before and after its jaxdiag run, and is compared within itself
    assert len(results["round_gemm"]) == results["rounds"] == len(summary["round_fraction_of_ceiling"])
    assert all(set(g) == {"before", "after"} for g in results["round_gemm"])
    # the start-up pieces were timed in their own processes
    phases = summary["startup_phases_s"]
    assert {"import_s", "resolve_s", "load_s", "trace_s", "lower_s", "compile_s"} <= set(phases)
    assert all(v >= 0 for k, v in phases.items() if k != "first_execution_excess_s")
    assert len(results["startup_phases"]) == results["rounds"] and "Start-up piece by piece" in markdown
    assert summary["median_round_fraction_of_ceiling"] > 0 and summary["median_round_speedup"] > 0
    for tool in ("transformers", "transformerlens"):  # each PyTorch script wrote its results
        assert "run_s" in results["whole_process"][tool][0]["phases"]


def test_first_execution_benchmark_runs_end_to_end(tmp_path):
    run_smoke("first_execution", tmp_path)
    results = json.loads((tmp_path / "first_execution_smoke.json").read_text())
    summary = results["summary"]
    assert len(results["profile"]["wall_s"]) == results["executions"] and summary["later_wall_s"] > 0
    # XLA's operations were found in every execution's window and summed by kind
    assert summary["kinds"] and all(len(p) > 0 for p in results["profile"]["per_kind"])
    assert all(row["operations"] > 0 and row["first_ms"] >= 0 for row in summary["kinds"].values())
    assert not any(re.search(r"\.\d+$", kind) for kind in summary["kinds"])
    assert results["command"] in (tmp_path / "FIRST_EXECUTION_SMOKE.md").read_text()
