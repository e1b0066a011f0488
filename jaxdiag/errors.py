"""The one exception type for bad user input.

The CLI prints its message as a single line and exits with status 2; library callers can catch it
like any ``ValueError``.
"""


class JaxdiagError(ValueError):
    """Bad input from the user (model, config, prompts, store): the message names the problem."""


class AnalysisError(ValueError):
    """Bad input to the analysis (store, condition, circuit, variable): the message names the problem on
    one line. Defined here, JAX-free, because the circuit-file format (:mod:`jaxdiag.circuits`) is read
    by runs and reports alike; :mod:`analysis.errors` re-exports it."""


class Interrupted(KeyboardInterrupt):
    """A run stopped by SIGINT or SIGTERM; the CLI prints the message and exits with ``exit_status``
    (130 for SIGINT, 143 for SIGTERM, as shells report them)."""

    def __init__(self, message: str = "", exit_status: int = 130):
        super().__init__(message)
        self.exit_status = exit_status
