"""codellama-lsp: a Language Server that completes code with Code Llama (GGUF, llama.cpp in-process).

In: an editor's LSP messages (``cli`` starts the server; ``server`` holds the handlers). Out: inline
completions. The stages are separate modules, in the order data flows: ``context`` (document + cursor ->
token-budgeted windows), ``fim`` (windows -> prompt token ids with the model's ``vocab``: tokenizer view and
sentinel ids), ``healing`` (take back the prompt's last tokens at the cursor), ``engines`` (leaves: token ids
-> generated text on a worker thread, with ``sampling``), ``postprocess`` (text -> what the editor shows),
``cache`` (type-through), ``config`` (settings), ``models`` (model spec -> GGUF path) and ``pipeline``
(the stages in order, shared with the CLI). ``llama`` is the one llama.cpp adapter, also used by
``model_export``, ``quantize`` and ``model_train``; it imports nothing else of this package.
"""
