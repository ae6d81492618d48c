"""The one exception type of the ``quantize`` package.

Every failure a user can cause (a file that is not a GGUF, an unknown type, an existing output, llama.cpp
refusing a tensor) is raised as :class:`QuantizeError` with a one-line message in the form "expected X,
got Y". The command-line entry points translate it into that line on stderr and a non-zero exit status;
nothing else in the package prints or exits. ``llama_session`` is where the llama.cpp adapter's
``LlamaError`` becomes a ``QuantizeError``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from codellama_core import llama


class QuantizeError(Exception):
    """A user-facing failure of quantization, imatrix computation or the quality report."""


@contextmanager
def llama_session(
    path: str | os.PathLike[str], *, n_ctx: int, threads: int | None = None, cb_eval: Any = None
) -> Iterator[llama.Context]:
    """``path`` loaded on the CPU (no AMX repacking: see ``codellama_core.llama``) with one context of ``n_ctx``
    tokens that keeps every position's logits and evaluates a whole chunk in one batch; ``cb_eval`` is a
    ``ggml_backend_sched_eval_callback`` the caller keeps alive (the imatrix collector).

    The model must have a BOS token: the imatrix and the report start every chunk with it, as
    llama.cpp's llama-imatrix and llama-perplexity do for Llama models."""
    options = llama.ContextOptions(n_ctx=n_ctx, n_batch=n_ctx, threads=threads, all_logits=True, cb_eval=cb_eval)
    try:
        with llama.open_context(path, options) as ctx:
            if ctx.model.bos is None:
                raise QuantizeError(f"expected a model with a BOS token (chunks start with it), got none in {path}")
            yield ctx
    except llama.LlamaError as exc:
        raise QuantizeError(str(exc)) from None
