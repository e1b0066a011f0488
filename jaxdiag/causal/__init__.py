"""Causal effects of heads on a task metric: exact (zero, mean, patch) and attribution patching
(AtP, AtP*), written against the block interface of :mod:`jaxdiag.models.family`."""
