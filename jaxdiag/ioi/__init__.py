"""A small GPT-2 with GPT-2's BPE vocabulary and an IOI circuit, trained and shipped by jaxdiag.

- :mod:`jaxdiag.ioi.data`      training texts where indirect-object identification pays, held-out sets
- :mod:`jaxdiag.ioi.train`     ``python -m jaxdiag.ioi.train --out DIR --seed S``
- :mod:`jaxdiag.ioi.identify`  the circuit by patching, mean-ablation and attention (no diagnostics)

Importing this package is cheap (no JAX); the submodules import JAX.
"""

from pathlib import Path

CHECKPOINT_DIR = Path(__file__).resolve().parent.parent / "data" / "ioi-4l8h"
"""The shipped checkpoint: config.json, model.safetensors, training_record.json, circuit.toml, identify.json."""
