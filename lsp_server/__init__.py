"""codellama-lsp: a Language Server that completes code with Code Llama (GGUF, llama.cpp in-process).

In: an editor's LSP messages (``cli`` starts the server; ``server`` holds the handlers). Out: inline
completions. The stages are separate modules: ``context`` (document + cursor -> token-budgeted windows),
``fim`` (windows -> Code Llama FIM token ids), ``engines`` (ids -> generated text on a worker thread),
``postprocess`` (text -> what the editor shows), ``cache`` (type-through), ``config`` (settings),
``models`` (model spec -> GGUF path), and ``pipeline`` (the stages in order, shared with the CLI).
"""
