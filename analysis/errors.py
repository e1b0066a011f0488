"""The one exception type for bad input to the analysis package.

It subclasses ``ValueError`` (like ``jaxdiag.errors.JaxdiagError``) so the CLI can print its message
on one line and exit with status 2. It is defined in :mod:`jaxdiag.errors` (JAX-free) because the
circuit-file format, :mod:`jaxdiag.circuits`, raises it for runs and reports alike.
"""

from jaxdiag.errors import AnalysisError

__all__ = ["AnalysisError"]
