"""Training configurations: the model shapes and the two stages (stage 1, LCFT) of each named recipe.

In: nothing. Out: ``CONFIGS[name] -> TrainConfig`` for ``python -m model_train.train --config NAME``.
Kept apart from the training code so that retuning the demo recipe does not change the content hash
(``tests/fixtures/micro_model.py``) under which the micro model is cached.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from model_train.model import ModelArgs


@dataclass(frozen=True)
class Stage:
    steps: int
    seq_len: int
    batch_size: int
    lr: float  # peak; the cosine ends at lr / 30
    warmup: int
    rope_theta: float


@dataclass(frozen=True)
class TrainConfig:
    name: str
    corpus: str  # "stdlib" (the data manifest's train split) or "micro" (tests/data/micro_corpus)
    vocab_size: int  # trained pieces; the 4 FIM pieces come on top
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    multiple_of: int
    stage1: Stage
    lcft: Stage
    chars_per_doc: int  # 0: every file is one document
    fim_rate: float = 0.9
    spm_rate: float = 0.5
    weight_decay: float = 0.1
    tokenizer_chars: int = 0  # 0: train the tokenizer on all of the corpus; else on about this many characters
    extra: dict = field(default_factory=dict)

    def model_args(self, vocab: int, rope_theta: float) -> ModelArgs:
        return ModelArgs(
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            vocab_size=vocab,
            multiple_of=self.multiple_of,
            rope_theta=rope_theta,
        )


CONFIGS: dict[str, TrainConfig] = {
    # Memorises tests/data/micro_corpus (about 3 minutes on 2 idle CPU cores). The vocabulary is as large
    # as that tiny corpus allows, so its tokens are whole words: shorter sequences, cheaper steps, and
    # an unambiguous "where am I in the file" for the FIM lookups the model has to learn.
    "micro": TrainConfig(
        name="micro",
        corpus="micro",
        vocab_size=640,
        dim=128,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        multiple_of=32,
        chars_per_doc=0,
        stage1=Stage(steps=800, seq_len=160, batch_size=16, lr=3e-3, warmup=30, rope_theta=1e4),
        lcft=Stage(steps=80, seq_len=320, batch_size=8, lr=1e-3, warmup=5, rope_theta=1e6),
    ),
    # The shipped demo model: about 40 minutes on this 2-core machine (README: measured times).
    # dim 256 and multiple_of 256 make every weight row a multiple of 256, so llama.cpp's K-quants apply
    # to every tensor (with dim 128 they fell back to legacy types). ~15M stage-1 tokens for ~3.7M
    # parameters (embeddings aside); the loss is still falling at the end, so more steps help.
    "demo": TrainConfig(
        name="demo",
        corpus="stdlib",
        vocab_size=2048,
        dim=256,
        n_layers=4,
        n_heads=4,
        n_kv_heads=2,
        multiple_of=256,
        chars_per_doc=600,
        tokenizer_chars=6_000_000,
        stage1=Stage(steps=3600, seq_len=256, batch_size=16, lr=2e-3, warmup=100, rope_theta=1e4),
        lcft=Stage(steps=60, seq_len=1024, batch_size=4, lr=7e-4, warmup=6, rope_theta=1e6),
    ),
}
