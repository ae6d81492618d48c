"""model_export: trained Llama / Code Llama checkpoints (Meta or Hugging Face layout) -> GGUF for llama.cpp.

In: a checkpoint folder (``consolidated.NN.pth`` + ``params.json``, or HF safetensors / ``pytorch_model.bin``
+ ``config.json``) and its ``tokenizer.model``. Out: one GGUF file that llama.cpp loads as the ``llama``
architecture, with Code Llama's rope theta, context length and fill-in-the-middle token ids.

Modules, in the order data flows through them: ``checkpoints`` (read, merge shards, never run pickled code),
``tensors`` (names, split axes, HF q/k un-permutation), ``vocab`` (tokenizer -> GGUF vocabulary), ``convert``
(orchestration and CLI), ``verify`` (NumPy reference forward pass vs llama.cpp logits on the written file).
Every failure a user can cause is raised as ``ExportError`` and turned into one stderr line by the CLIs.
"""

from model_export.errors import ExportError

__all__ = ["ExportError"]
