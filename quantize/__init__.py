"""Quantized builds of an exported Code Llama GGUF, and what each one costs in quality.

In: the f16 GGUF written by ``model_export`` (or a checkpoint, through :mod:`quantize.pipeline`). Out:
quantized GGUFs made by llama.cpp's own quantizer (:mod:`quantize.quantize`, CLI ``python -m quantize``),
an importance matrix measured on code (:mod:`quantize.imatrix`), a quality report against the f16 model -
KL divergence, perplexity, top-1 agreement, size, bits per weight (:mod:`quantize.report`) - and a
``manifest.json`` that ties the files to their source checkpoint.

Every user-facing failure is a :class:`quantize.errors.QuantizeError`; the CLIs print it as one line.
"""

from quantize.errors import QuantizeError

__all__ = ["QuantizeError"]
