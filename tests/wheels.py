"""The two real-weight encoders of the tests (see jaxdiag.models.wheels for how they are found)."""

from jaxdiag.models.wheels import minilm_dir, rxnmapper_dir  # noqa: F401
