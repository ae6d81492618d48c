"""What every tool of the repository shares, importing nothing else of it.

- ``llama``: the one llama.cpp adapter (load, vocabulary, decode, logits, threads, platform workarounds);
  the completion engine, ``model_export.verify``, ``quantize`` and ``model_train.eval`` all run llama.cpp through it.
- ``gguf_check``: the pre-flight check that keeps a bad GGUF header away from llama.cpp.
- ``tool``: the command-line error boundary (one ``error:`` line, exit codes, SIGTERM as an exception).
- ``outfile``: output files written atomically (never a half-written file), hashing.
- ``fim``: Code Llama's fill-in-the-middle piece names.
- ``errors``: ``CoreError``, the base of every user-facing error here.

``lsp_server``, ``model_export``, ``quantize`` and ``model_train`` import this package; it imports none of them
(``tests/test_layering.py`` checks the whole import graph).
"""
