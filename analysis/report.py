"""`jaxdiag report`: figures, summary.json, report.md and report.html (self-contained) for one store.

    write_report("run.zarr", "report/")                 # library call (the CLI dispatches here)
    python -m analysis.report run.zarr --out report/    # same, without jaxdiag's CLI
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Sequence


from analysis._util import to_jsonable
from analysis.circuits import NO_CIRCUIT, Circuit, load_ablation, load_circuit
from analysis.errors import AnalysisError
from analysis.html import report_page
from analysis.markdown import markdown
from analysis.pipeline import run_analysis
from analysis.summary import summary
from analysis.store import default_conditions, keep_complete_pairs, open_store, run_config
from jaxdiag.completeness import check_complete
from jaxdiag.paths import StoreLocation, check_output_dir

if TYPE_CHECKING:
    import xarray as xr


def resolve_circuit(spec: str | None, config: dict, shape: tuple[int, int], store: Path | None,
                    ds: xr.Dataset | None = None, condition: str | None = None) -> Circuit:
    """--circuit, else the run config's circuit, else ioi23 for a 12 x 12 GPT-2, else NO_CIRCUIT (the report's
    circuit-free sections only). ds and condition serve
    'effects:K' (the causal circuit of the store's effects, averaged over condition's prompts). A circuit
    file is looked for beside the store (a local path; None for a URL) and in the working directory."""
    spec = spec or config.get("circuit")
    if isinstance(spec, dict):  # a run config may carry the circuit table inline
        from analysis.circuits import from_mapping

        return from_mapping(spec, name=str(spec.get("name", "circuit")), source="run config")
    if spec is None:
        # Stores written before the model_type attribute existed were all GPT-2.
        model_type = str(ds.attrs.get("model_type", "gpt2")) if ds is not None else "gpt2"
        if shape != (12, 12) or model_type != "gpt2":
            return NO_CIRCUIT  # the circuit-free report; it says the circuit tests need --circuit
        spec = "ioi23"
    beside = () if store is None else (store.parent,)
    return load_circuit(spec, search_dirs=(*beside, Path.cwd()), store=ds, condition=condition)


def parse_min_effect(text: str | None) -> dict[str, float]:
    """--min-effect: one number for every tested variable ("0.02") or VAR=X pairs ("kl_norm=0.02,chi=0.005");
    {} for None (the defaults, analysis.findings.MIN_EFFECT)."""
    from analysis.findings import TESTED

    if text is None:
        return {}
    out: dict[str, float] = {}
    for part in (p.strip() for p in str(text).split(",")):
        name, _, value = part.rpartition("=")
        try:
            x = float(value)
        except ValueError:
            raise AnalysisError(f"--min-effect {text!r}: give a number or VAR=X pairs, e.g. kl_norm=0.02,chi=0.01") from None
        for var in ([name.strip()] if name else TESTED):
            out[var] = x
    return out


def write_report(store_path: str, out_dir: str, *, circuit: str | None = None, a: str | None = None,
                 b: str | None = None, n_boot: int = 1000, n_perm: int = 1000, seed: int = 0,
                 ablation: str | None = None, min_effect: str | dict[str, float] | None = None,
                 memory: str | int | None = None, scheduler: str | None = None, in_memory: bool = False,
                 allow_incomplete: bool = False) -> dict:
    """Analyse a store and write figures (PNG + SVG), summary.json, report.md and report.html (the
    markdown as one page with its figures inline: analysis.html) into out_dir.

    circuit: "ioi23", "ioi26", a TOML/JSON circuit file or "effects:K" (the causal circuit of the store's
    effects of kind K) (default: the run config's, else ioi23 on 12 x 12 models). a, b: conditions (default: the run config's two, else ioi/non_ioi, else the
    store's first two). ablation: optional JSON of per-head ablation effects (overrides the circuit
    file's). min_effect: the per-head tests' minimum effect of interest (parse_min_effect's text or
    {var: x}; default analysis.findings.MIN_EFFECT). memory: the streamed report's budget (analysis.streaming.parse_memory's
    text or bytes; default analysis.streaming.DEFAULT_MEMORY). scheduler: where the streamed blocks run: None (dask's
    local threads), "threads", "processes", "synchronous", or a dask.distributed scheduler address
    ("tcp://host:8786"). in_memory: load the store and run analysis.pipeline.run_analysis (units of one prompt) instead of
    streaming (the same numbers up to G_MAX prompts per condition). allow_incomplete: analyse an incomplete store
    (jaxdiag.completeness; refused otherwise) on its complete pairs only, stated atop report.md and in
    summary.json's `incomplete`. Returns the summary dict (as written,
    NaN -> None). Raises AnalysisError on bad input, before anything is written.
    """
    x_min = min_effect if isinstance(min_effect, dict) else parse_min_effect(min_effect)
    location = StoreLocation.of(store_path, error=AnalysisError)  # a path or an fsspec URL
    check_output_dir(out_dir, error=AnalysisError)
    store = location.local_path
    ds = open_store(location)
    incomplete = check_complete(ds, str(location), allow_incomplete, error=AnalysisError)
    config = run_config(ds)
    shape = (int(ds.sizes["layer"]), int(ds.sizes["head"]))
    default_a, default_b = default_conditions(ds, config) if a is None or b is None else (a, b)
    a, b = a or default_a, b or default_b
    if incomplete is not None:
        ds = keep_complete_pairs(ds, a, b)
    chosen = resolve_circuit(circuit, config, shape, store, ds, a)
    if ablation is not None:
        import dataclasses

        chosen = dataclasses.replace(chosen, ablation=load_ablation(ablation, *shape, "--ablation", Path.cwd()))
    if in_memory:
        analysis = run_analysis(ds, chosen, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed,
                                store_path=str(location), min_effect=x_min)
    else:
        from analysis.pipeline import run_analysis_streamed
        from analysis.streaming import parse_memory, scheduler_context

        budget = parse_memory(memory)
        with scheduler_context(scheduler):
            analysis = run_analysis_streamed(location, chosen, a, b, n_boot=n_boot, n_perm=n_perm, seed=seed,
                                             store_path=str(location), min_effect=x_min, memory=budget,
                                             complete_pairs_only=incomplete is not None)
    result = to_jsonable(summary(analysis))
    page = markdown(analysis)
    if incomplete is not None:  # said first, in both: the numbers below are of part of the run
        result = {"incomplete": incomplete, **result}
        page = f"> **Note:** {incomplete}.\n\n{page}"
    text = json.dumps(result, indent=1, allow_nan=False)

    from analysis.figures import write_figures  # matplotlib only when there is something to draw

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".report-", dir=out))
    try:
        write_figures(analysis, staging)
        (staging / "summary.json").write_text(text + "\n")
        (staging / "report.md").write_text(page)
        (staging / "report.html").write_text(report_page((staging / "report.md").read_text(), staging))
        for name in os.listdir(staging):  # all-or-nothing: only complete files reach out_dir
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return result


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m analysis.report", description=__doc__.splitlines()[0])
    p.add_argument("store")
    p.add_argument("--out", required=True)
    p.add_argument("--circuit", default=None, help="ioi23 | ioi26 | circuit file (TOML/JSON) | effects:KIND")
    p.add_argument("--a", default=None, help="condition a (default: the run config's first)")
    p.add_argument("--b", default=None, help="condition b (default: the run config's second)")
    p.add_argument("--n-boot", type=int, default=1000)
    p.add_argument("--n-perm", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ablation", default=None, help="JSON of per-head ablation effects")
    p.add_argument("--min-effect", default=None, metavar="X|VAR=X,...",
                   help="minimum effect of interest of the per-head tests (default kl_norm=0.01,chi=0.01)")
    add_scale_arguments(p)
    return p


def add_scale_arguments(p: argparse.ArgumentParser) -> None:
    """--memory, --scheduler, --in-memory (shared with `jaxdiag report`)."""
    p.add_argument("--memory", default=None, metavar="SIZE",
                   help="memory budget of the streamed report, e.g. 2GB or 512MB (default 2GB): sets how many "
                        "prompts each streamed block holds")
    p.add_argument("--scheduler", default=None, metavar="threads|processes|synchronous|tcp://HOST:PORT",
                   help="where the streamed blocks run: dask's local threads (default), local processes, or a "
                        "dask.distributed scheduler's address")
    p.add_argument("--in-memory", action="store_true",
                   help="load the whole store and run the in-memory analysis instead of streaming it")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = write_report(args.store, args.out, circuit=args.circuit, a=args.a, b=args.b, n_boot=args.n_boot,
                              n_perm=args.n_perm, seed=args.seed, ablation=args.ablation, min_effect=args.min_effect,
                              memory=args.memory, scheduler=args.scheduler, in_memory=args.in_memory)
    except AnalysisError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if result["circuit_test"] is None:
        print(f"wrote {args.out}/report.md, summary.json and figures ({result['design']} design); no circuit, so no "
              "circuit tests: pass --circuit FILE or effects:KIND for them")
        return 0
    mw, lead = result["mannwhitney"]["kl_norm"], result["circuit_test"]["kl_norm"]
    print(f"wrote {args.out}/report.md, summary.json and figures ({result['design']} design); lead test "
          f"|delta_z kl_norm| permutation p={lead['pvalue']:.3g}; posts' Mann-Whitney |delta kl_norm| "
          f"U={mw['U']:.0f} p={mw['p']:.3g} (one-sided)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
