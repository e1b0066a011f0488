"""The ``jaxdiag`` command: ``run`` a sweep into a Zarr store, ``info`` about a store, ``report`` on one.

Bad input of any kind ends in one line, ``jaxdiag: error: ...`` on stderr, and exit status 2.
JAX is imported only by ``run``, so ``info`` and ``report`` start fast.
"""

from __future__ import annotations

import argparse
import gc
import signal
import sys
from typing import Sequence

from jaxdiag.errors import AnalysisError, Interrupted, JaxdiagError
from jaxdiag.schema import RUN_KINDS, PRECISIONS, QUERIES


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose epilog is made only when its help is shown: the model registry it lists imports
    JAX, which the light commands must not pay for."""

    def __init__(self, *args, lazy_epilog=None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._lazy_epilog = lazy_epilog

    def format_help(self) -> str:
        if self._lazy_epilog is not None:
            self.epilog = self._lazy_epilog()
        return super().format_help()


def _families() -> str:
    from jaxdiag.models.registry import SUPPORTED

    return f"model families (a checkpoint's config.json model_type): {', '.join(SUPPORTED)}"


def _parser() -> argparse.ArgumentParser:
    from jaxdiag.sweep.runconfig import preset_names


    parser = argparse.ArgumentParser(prog="jaxdiag", description="Per-head attention diagnostics for GPT-2-family models.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="{run,info,report,verify}",
                                     parser_class=_Parser)

    run = commands.add_parser("run", help="run a sweep into a Zarr store", lazy_epilog=_families,
                              description="Run a sweep (a TOML run config or a preset; flags override it) into a Zarr store.")
    run.add_argument("config", nargs="?", metavar="CONFIG.toml", help="run config (default: --preset default)")
    run.add_argument("--preset", metavar="NAME", help=f"a run config shipped with jaxdiag: {', '.join(preset_names())}")
    run.add_argument("--model", metavar="HUB_ID_OR_DIR", help="hub id, local directory or builtin:NAME")
    run.add_argument("--prompts", metavar="FILE.jsonl", help="JSONL prompt file (replaces the config's prompt source)")
    run.add_argument("--n-prompts", type=int, metavar="N", help="prompts per condition")
    run.add_argument("--query", choices=QUERIES, help="diagnose the last token or every position")
    run.add_argument("--no-bos", dest="prepend_bos", action="store_const", const=False, default=None,
                     help="do not prepend BOS to text prompts")
    run.add_argument("--batch-size", type=int, metavar="B", help="prompts per device per step")
    run.add_argument("--chunk-size", type=int, metavar="C", help="prompts per store chunk")
    run.add_argument("--precision", choices=PRECISIONS)
    run.add_argument("--seed", type=int, metavar="S")
    run.add_argument("--mesh", metavar="data=D,model=M", help="device mesh: parameters sharded over M devices "
                     "(Megatron-style), batches over D rows of them (default: every local device on data)")
    run.add_argument("--effects", metavar="KINDS", help=f"causal effects per head, direct logit attribution, the logit lens and patching by position, comma-separated: {', '.join(RUN_KINDS)}")
    run.add_argument("--out", required=True, metavar="STORE.zarr", help="the Zarr store to write: a path or an fsspec "
                     "URL (file://, s3://, gs://, memory:// within one process)")
    mode = run.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue an interrupted run of the same config")
    mode.add_argument("--overwrite", action="store_true", help="replace an existing store")
    run.add_argument("--quiet", action="store_true", help="no progress bar or messages")
    run.add_argument("--strict-vocab", action="store_true",
                     help="refuse prompts holding token ids the model never trained (default: warn and record)")
    _compile_cache_flags(run)
    dist = run.add_argument_group("multi-host (jax.distributed)")
    dist.add_argument("--coordinator", metavar="HOST:PORT", help="coordinator address of a multi-process run")
    dist.add_argument("--num-processes", type=int, metavar="N")
    dist.add_argument("--process-id", type=int, metavar="I")

    info = commands.add_parser("info", help="describe a store", description="Print a store's dims, conditions, completeness, model, provenance and a digest of its run config.")
    info.add_argument("store", metavar="STORE.zarr", help="a path or an fsspec URL")
    info.add_argument("--json", action="store_true",
                      help="print one JSON object with everything: attributes (the full run config included), "
                           "dims, variables, conditions and counts, completeness")

    report = commands.add_parser("report", help="analyse a store", description="Write figures and summary.json for a store.")
    report.add_argument("store", metavar="STORE.zarr", help="a path or an fsspec URL")
    report.add_argument("--out", required=True, metavar="DIR")
    report.add_argument("--circuit", metavar="ioi23|ioi26|FILE|effects:KIND",
                        help="circuit to test: built-in, a TOML/JSON file, or a causal circuit of the store's effects")
    report.add_argument("--a", metavar="COND")
    report.add_argument("--b", metavar="COND")
    report.add_argument("--n-boot", type=int, default=1000, metavar="N")
    report.add_argument("--n-perm", type=int, default=1000, metavar="N")
    report.add_argument("--seed", type=int, default=0, metavar="S")
    report.add_argument("--min-effect", default=None, metavar="X|VAR=X,...",
                        help="minimum effect of interest of the per-head tests (default kl_norm=0.01,chi=0.01)")
    report.add_argument("--memory", default=None, metavar="SIZE",
                        help="memory budget of the streamed report, e.g. 2GB or 512MB (default 2GB)")
    report.add_argument("--scheduler", default=None, metavar="threads|processes|synchronous|tcp://HOST:PORT",
                        help="where the streamed blocks run: dask's local threads (default), local processes, or a "
                             "dask.distributed scheduler's address")
    report.add_argument("--in-memory", action="store_true",
                        help="load the whole store and run the in-memory analysis instead of streaming it")
    _allow_incomplete_flag(report)

    verify = commands.add_parser(
        "verify", help="verify the heads an AtP/AtP* ranking puts first by exact patching",
        description="Rank heads by the store's attribution-patching estimate, patch the top ones and a random "
                    "sample of the rest exactly on the same prompts, and bound the false negatives left.")
    verify.add_argument("store", metavar="STORE.zarr")
    verify.add_argument("--out", required=True, metavar="DIR")
    verify.add_argument("--method", metavar="KIND", help="the estimate to rank by (default: the store's first atpstar_*)")
    verify.add_argument("--top", type=int, default=10, metavar="K", help="heads to verify by exact patching")
    verify.add_argument("--sample", type=int, default=10, metavar="M", help="random unverified heads patched for the bound")
    verify.add_argument("--fraction", type=float, default=0.2, help="a head matters at >= this x the largest verified effect")
    verify.add_argument("--batch-size", type=int, default=32, metavar="B")
    verify.add_argument("--seed", type=int, default=0, metavar="S")
    _allow_incomplete_flag(verify)
    _compile_cache_flags(verify)
    return parser


def _allow_incomplete_flag(command: argparse.ArgumentParser) -> None:
    command.add_argument("--allow-incomplete", action="store_true",
                         help="analyse an interrupted run's store (complete pairs only) instead of refusing it")


def _compile_cache_flags(command: argparse.ArgumentParser) -> None:
    cache = command.add_mutually_exclusive_group()
    cache.add_argument("--compile-cache", metavar="DIR",
                       help="JAX's persistent compilation cache (default: $JAXDIAG_CACHE_DIR, else ~/.cache/jaxdiag/xla)")
    cache.add_argument("--no-compile-cache", action="store_true", help="compile every program afresh")


def _use_compile_cache(args: argparse.Namespace) -> None:
    if not args.no_compile_cache:
        from jaxdiag.sweep.compile_cache import enable_compile_cache

        enable_compile_cache(args.compile_cache)


def _prefetch_weights(model: str) -> None:
    """Hash and read a local checkpoint's weights on the second core while JAX imports."""
    from jaxdiag import prefetch
    from jaxdiag.paths import SHARD_INDEX, local_model_dir, weights_file

    try:
        directory = local_model_dir(model)
    except JaxdiagError:
        return  # the run reports a bad model name where it resolves it
    weights = weights_file(directory) if directory is not None else None
    if weights is not None and weights.name != SHARD_INDEX:  # shards are mapped tensor by tensor instead
        prefetch.start(weights)


def _run(args: argparse.Namespace) -> int:
    from jaxdiag.sweep.runconfig import load_config

    distributed = (args.coordinator, args.num_processes, args.process_id)
    if any(v is not None for v in distributed) and not all(v is not None for v in distributed):
        raise JaxdiagError("a multi-process run needs --coordinator, --num-processes and --process-id together")
    config = load_config(args.config, preset=args.preset, overrides={
        "model": args.model, "prompts": args.prompts, "n_prompts": args.n_prompts, "query": args.query,
        "prepend_bos": args.prepend_bos, "batch_size": args.batch_size, "chunk_size": args.chunk_size,
        "precision": args.precision, "seed": args.seed, "effects": args.effects, "mesh": args.mesh,
    })
    if config.mesh.model == 1:  # a sharded load streams each tensor into its shards: nothing to read ahead
        _prefetch_weights(config.model)
    _use_compile_cache(args)
    if args.coordinator is not None:
        import jax

        jax.distributed.initialize(coordinator_address=args.coordinator, num_processes=args.num_processes,
                                   process_id=args.process_id)
    from jaxdiag.sweep.run import run_sweep

    if _OWN_PROCESS:
        # The objects JAX, Flax and Zarr made on import live as long as the process: keep them out of
        # the collector's full passes (they took ~0.15 s of a warm start-up, timed with gc.callbacks).
        gc.freeze()

    # A scheduler's SIGTERM stops the run like Ctrl-C does: writes in flight are flushed, then exit 143.
    previous = signal.signal(signal.SIGTERM, _terminated)
    say = (lambda message: None) if args.quiet else (lambda message: print(message, file=sys.stderr))
    try:
        result = run_sweep(config, args.out, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet, log=say,
                           strict_vocab=args.strict_vocab)
    finally:
        signal.signal(signal.SIGTERM, previous)
    counts = ", ".join(f"{c} {n}" for c, n in zip(result.layout.conditions, result.layout.counts))
    rate = result.computed_prompts / result.seconds if result.seconds > 0 else 0.0
    say(f"wrote {result.path} ({counts}; {result.computed_prompts} prompts computed in {result.seconds:.1f} s, "
        f"{rate:.1f} prompts/s)")
    return 0


def _terminated(signum, frame) -> None:
    raise Interrupted("terminated", exit_status=128 + signum)


def _info(args: argparse.Namespace) -> int:
    if args.json:
        import json

        from jaxdiag.sweep.store import info

        print(json.dumps(info(args.store), indent=1))
    else:
        from jaxdiag.sweep.store import describe

        print(describe(args.store))
    return 0


def _report(args: argparse.Namespace) -> int:
    try:
        from analysis.report import write_report
    except ImportError as exc:
        raise JaxdiagError(f"the report needs the analysis package, which is not importable ({exc})") from None
    summary = write_report(args.store, args.out, circuit=args.circuit, a=args.a, b=args.b, n_boot=args.n_boot,
                           n_perm=args.n_perm, seed=args.seed, min_effect=args.min_effect, memory=args.memory,
                           scheduler=args.scheduler, in_memory=args.in_memory,
                           allow_incomplete=args.allow_incomplete)
    conditions = summary.get("conditions", {}) if isinstance(summary, dict) else {}
    print(f"wrote report to {args.out} ({conditions.get('a')} vs {conditions.get('b')})")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from jaxdiag.paths import check_output_dir
    from jaxdiag.sweep.verify import render, verify, write

    check_output_dir(args.out)  # before minutes of exact patching
    _use_compile_cache(args)
    result = verify(args.store, method=args.method, top=args.top, sample=args.sample, seed=args.seed,
                    fraction=args.fraction, batch_size=args.batch_size, allow_incomplete=args.allow_incomplete)
    write(result, args.out)
    print(render(result))
    return 0


def _input_errors() -> tuple[type[BaseException], ...]:
    return (JaxdiagError, AnalysisError)


# True when the process is the ``jaxdiag`` command itself (:func:`command`), not a caller of :func:`main`.
_OWN_PROCESS = False


def command() -> None:
    """The ``jaxdiag`` console script: :func:`main` in a process of its own, then exit."""
    global _OWN_PROCESS
    _OWN_PROCESS = True
    status = main()
    # Everything is written and closed: spare the interpreter's final collections their walk over every
    # object still alive (~0.4 s after a run). Reference counting still frees the frozen objects.
    gc.freeze()
    sys.exit(status)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handlers = {"run": _run, "info": _info, "report": _report, "verify": _verify}
    try:
        return handlers[args.command](args)
    except _input_errors() as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message holds
        print(f"jaxdiag: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        print(f"jaxdiag: {exc or 'interrupted (continue with --resume)'}", file=sys.stderr)
        return getattr(exc, "exit_status", 130)


if __name__ == "__main__":
    command()
