"""Time the analysis package's vectorised bootstrap at the issue's scale.

    python benchmarks/analysis_bootstrap.py [--heads 144] [--prompts 10000] [--resamples 10000]

Prompts are per condition; both conditions are resampled (delta of means, BCa interval).
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np

from analysis.shifts import shift


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--heads", type=int, default=144)
    p.add_argument("--prompts", type=int, default=10_000)
    p.add_argument("--resamples", type=int, default=10_000)
    args = p.parse_args()
    rng = np.random.default_rng(0)
    xa = rng.standard_normal((args.prompts, args.heads)).astype(np.float32)
    xb = rng.standard_normal((args.prompts, args.heads)).astype(np.float32)
    start = time.perf_counter()
    res = shift(xa, xb, n_boot=args.resamples, rng=1, method="BCa")
    elapsed = time.perf_counter() - start
    print(f"{args.heads} heads x {args.resamples} resamples x {args.prompts} prompts per condition (2 conditions): "
          f"{elapsed:.1f} s on {platform.processor() or platform.machine()} ({os.cpu_count()} cores); "
          f"median CI width {np.median(res.confidence_interval.high - res.confidence_interval.low):.4f}")


if __name__ == "__main__":
    main()
