"""Code Llama's fill-in-the-middle pieces as its tokenizer.model stores them (SentencePiece's U+2581 space first).

The exporter looks them up (``model_export.vocab``), the micro model's tokenizer adds them (``model_train.tokenizer``),
the server finds them in GGUFs without FIM keys (``lsp_server.vocab``). The order is the one Code Llama appends them in.
"""

CODELLAMA_FIM_PIECES = {"pre": "▁<PRE>", "suf": "▁<SUF>", "mid": "▁<MID>", "eot": "▁<EOT>"}
