"""The one exception type for bad user input.

The CLI prints its message as a single line and exits with status 2; library callers can catch it
like any ``ValueError``.
"""


class JaxdiagError(ValueError):
    """Bad input from the user (model, config, prompts, store): the message names the problem."""
