"""The two real-weight encoders of the tests (see jaxdiag.wheels for how they are found)."""

from jaxdiag.wheels import minilm_dir, rxnmapper_dir  # noqa: F401
