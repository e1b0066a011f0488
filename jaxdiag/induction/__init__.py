"""The small GPT-2 with a known induction circuit that jaxdiag trains and ships as its offline default.

- :mod:`jaxdiag.induction.data`     synthetic sequences with copied segments, evaluation prompts
- :mod:`jaxdiag.induction.train`    ``python -m jaxdiag.induction.train --out DIR --seed S``
- :mod:`jaxdiag.induction.ablation` per-head zero/mean ablation and copying accuracy
- :mod:`jaxdiag.induction.identify` circuit heads by attention and ablation (no diagnostics)

Importing this package is cheap (no JAX); the submodules import JAX.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "induction-3l8h"
"""The shipped checkpoint: config.json, model.safetensors, training_record.json, circuit.toml, ablation.json."""
