"""The one exception type for bad input to the analysis package.

It subclasses ``ValueError`` (like ``jaxdiag.errors.JaxdiagError``) so the CLI can print its message
on one line and exit with status 2 without the analysis package importing ``jaxdiag``.
"""


class AnalysisError(ValueError):
    """Bad input (store, condition, circuit, variable): the message names the problem on one line."""
