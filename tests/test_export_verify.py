"""The built-in verifier: ``python -m model_export.verify CKPT_DIR OUT.gguf`` passes a good file, fails a bad one.

In: a fixture checkpoint, its correct GGUF and one converted with a wrong ``--rope-theta``. Out: pass/fail.
Checks the NumPy reference forward pass against the PyTorch model (so the verifier's reference is itself
right), the CLI's exit codes (0 within tolerance, 1 outside it, 2 for bad input) and its printed figures.
"""

from __future__ import annotations

import numpy as np
import torch

from model_export.checkpoints import open_checkpoint
from model_export.convert import convert
from model_export.verify import main, reference_logits, verify
from tests.fixtures.checkpoints import sample_code_tokens


def test_numpy_reference_matches_pytorch(checkpoint_factory):
    for kind in ("meta", "hf"):
        ckpt, model = checkpoint_factory(kind, shards=2, dtype=torch.bfloat16, seed=5)
        tokens = sample_code_tokens(ckpt / "tokenizer.model", 300)
        with torch.no_grad():
            ref = model(torch.tensor([tokens]))[0].numpy()
        with open_checkpoint(ckpt) as c:
            got = reference_logits(c, tokens)
        assert np.abs(got - ref).max() / np.abs(ref).max() < 1e-5
        assert (got.argmax(-1) == ref.argmax(-1)).all()


def test_verify_cli_good_and_wrong_theta(checkpoint_factory, tmp_path, capsys):
    ckpt, _ = checkpoint_factory("meta", shards=2, dtype=torch.bfloat16)
    good = convert(ckpt, tmp_path / "good.gguf", outtype="f32").out_path
    bad = convert(ckpt, tmp_path / "bad.gguf", outtype="f32", rope_theta=10000.0).out_path

    assert main([str(ckpt), str(good)]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "top-1 agreement" in out and "max rel difference" in out

    assert main([str(ckpt), str(bad), "--tokens", "300"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out

    report = verify(ckpt, bad, n_tokens=300)
    assert not report.passed and report.rel > 10 * report.rel_tol


def test_verify_f16_and_q8_0(checkpoint_factory, tmp_path):
    ckpt, _ = checkpoint_factory("hf", n_files=2, dtype=torch.bfloat16)
    for outtype in ("f16", "q8_0"):
        path = convert(ckpt, tmp_path / f"{outtype}.gguf", outtype=outtype).out_path
        report = verify(ckpt, path, n_tokens=300)
        assert report.passed, report.lines()


def test_verify_bad_input(checkpoint_factory, tmp_path, capsys):
    ckpt, _ = checkpoint_factory("meta")
    assert main([str(ckpt), str(tmp_path / "missing.gguf")]) == 1  # a failure, not bad usage (docs/cli.md)
    err = capsys.readouterr().err
    assert err.startswith("codellama-verify: error: expected a GGUF file") and err.count("\n") == 1
