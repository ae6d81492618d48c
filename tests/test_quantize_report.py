"""The quality report and the importance matrix.

Report: a model against itself is exactly KLD 0 / 100 % agreement / PPL ratio 1; Q8_0 beats Q4_0; the
default run scores >= 20k tokens and writes JSON; the log-softmax survives huge logits.
Importance matrix: what llama.cpp's evaluation callback collects equals the mean squared input of every
linear layer in the PyTorch reference model (forward hooks) on the same tokens; both file formats round-trip;
the quantizer really uses it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from quantize.corpus import EVAL_MODULES, IMATRIX_MODULES, corpus_text
from quantize.errors import QuantizeError, llama_session
from quantize.imatrix import compute_imatrix, load_imatrix, save_imatrix
from quantize.quantize import quantize_file
from quantize.report import compare_many, format_table, log_softmax64
from quantize.report import main as report_main
from tests.fixtures.checkpoints import TRAIN_FILES
from tests.fixtures.micro_model import micro_model  # noqa: F401  (fixture; trained once, cached in .cache/micro)
from tests.test_quantize_build import all_builds, kq_checkpoint, kq_f16, kq_model, tiny_f16  # noqa: F401  (fixtures)

GGUF_TO_META = {
    "attn_q": "attention.wq",
    "attn_k": "attention.wk",
    "attn_v": "attention.wv",
    "attn_output": "attention.wo",
    "ffn_gate": "feed_forward.w1",
    "ffn_up": "feed_forward.w3",
    "ffn_down": "feed_forward.w2",
}


def test_log_softmax64_is_stable():
    x = np.array([[1e4, 0.0, -1e4], [3.0, 3.0, 3.0]], dtype=np.float32)
    lp = log_softmax64(x)
    assert lp.dtype == np.float64 and np.isfinite(lp).all()
    np.testing.assert_allclose(np.exp(lp).sum(axis=1), 1.0, rtol=1e-12)
    assert lp[0, 0] == 0.0
    np.testing.assert_allclose(lp[1], -np.log(3.0))


def test_corpora_are_disjoint_and_held_out():
    assert not set(EVAL_MODULES) & set(IMATRIX_MODULES)
    assert not set(EVAL_MODULES) & set(TRAIN_FILES)
    # The demo model's data manifest (model_train/data/stdlib-X.Y.json) holds these files out of training.
    manifests = sorted((Path(__file__).resolve().parents[1] / "model_train" / "data").glob("stdlib-*.json"))
    assert manifests
    for m in manifests:
        split = {f["path"]: f["split"] for f in json.loads(m.read_text())["files"]}
        assert all(split.get(name, "heldout") == "heldout" for name in EVAL_MODULES), m.name


def test_self_comparison_is_exact(kq_f16):
    (q,) = compare_many(kq_f16, [kq_f16], n_ctx=128, n_chunks=4, threads=2)
    assert q.kld_mean == 0.0 and q.kld_max == 0.0 and q.kld_p99 == 0.0
    assert q.top1_agreement == 1.0 and q.top1_agreement_decided == 1.0
    assert 0 <= q.near_tie_share < 0.5
    assert q.ppl_ratio == 1.0
    assert q.tokens == 4 * 127
    assert q.candidate_type == "F16"


def test_q8_beats_q4(kq_f16, all_builds):
    q8, q4, q2 = compare_many(
        kq_f16, [all_builds["Q8_0"], all_builds["Q4_0"], all_builds["Q2_K"]], n_ctx=128, n_chunks=8, threads=2
    )
    assert 0 < q8.kld_mean < q4.kld_mean < q2.kld_mean
    assert q8.top1_agreement >= q4.top1_agreement
    # Flips concentrate on near-ties: agreement away from them is at least the overall figure.
    assert q8.top1_agreement_decided >= q8.top1_agreement
    assert q8.near_tie_share == q4.near_tie_share  # a property of the reference alone
    assert q8.kld_p99 < q4.kld_p99
    assert abs(q8.ppl_ratio - 1) < abs(q4.ppl_ratio - 1) + 1e-3
    assert q8.candidate_bpw < q8.reference_bpw
    table = format_table([q8, q4])
    assert "| Q8_0 |" in table and "| Q4_0 |" in table and "near-ties" in table


def test_report_cli_defaults_score_20k_tokens(tiny_f16, tmp_path, capsys):
    """Default settings on the dim-64 model (cheapest to run 2 x 40 chunks of 512 through)."""
    q8 = quantize_file(tiny_f16, tmp_path / "tiny.Q8_0.gguf", "Q8_0").path
    out = tmp_path / "r.json"
    assert report_main([str(tiny_f16), str(q8), "--json", str(out), "--threads", "2"]) == 0
    (d,) = json.loads(out.read_text())
    assert d["tokens"] >= 20000 and d["n_ctx"] == 512
    assert d["candidate_type"] == "Q8_0"
    assert 0 < d["kld_mean"] < 0.01 and d["top1_agreement"] > 0.9
    for key in ("kld_mean", "kld_p99", "ppl_reference", "ppl_candidate", "ppl_ratio", "top1_agreement",
                "candidate_size", "candidate_bpw"):  # fmt: skip
        assert np.isfinite(d[key])
    assert "| Q8_0 |" in capsys.readouterr().out


def test_report_rejects_short_corpus(kq_f16, tmp_path, capsys):
    small = tmp_path / "small.py"
    small.write_text("x = 1\n")
    assert report_main([str(kq_f16), str(kq_f16), "--corpus", str(small)]) == 1
    assert "expected a corpus of at least" in capsys.readouterr().err


# ---------------------------------------------------------------- importance matrix


@pytest.fixture(scope="module")
def imatrix_run(kq_f16):
    text, name = corpus_text(None, role="imatrix")
    data = compute_imatrix(kq_f16, text, n_ctx=128, max_tokens=3 * 127, threads=2, dataset=name)
    return data, text


def test_imatrix_matches_pytorch_reference(imatrix_run, kq_model, kq_f16):
    """Mean squared input per column of every linear layer, via forward hooks on the PyTorch model."""
    data, text = imatrix_run
    _ckpt, model = kq_model
    assert data.chunk_count == 3
    assert len(data.sums) == 2 * 7  # 2 layers x (q, k, v, o, gate, up, down); output.weight left out
    with llama_session(kq_f16, n_ctx=128) as s:
        toks = s.model.tokenize(text)[: 3 * 127]
        bos = s.model.bos
    chunks = [[bos] + toks[i * 127 : (i + 1) * 127] for i in range(3)]
    sums: dict[str, torch.Tensor] = {}
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, torch.nn.Linear) and name != "output":

            def hook(m, inp, _out, name=name):
                x = inp[0].reshape(-1, inp[0].shape[-1]).double()
                sums[name] = sums.get(name, 0) + (x * x).sum(0)

            hooks.append(mod.register_forward_hook(hook))
    with torch.no_grad():
        for c in chunks:
            model(torch.tensor([c]))
    for h in hooks:
        h.remove()
    means = data.means()
    for gguf_name, values in means.items():
        _, layer, kind, _ = gguf_name.split(".")
        ref = (sums[f"layers.{layer}.{GGUF_TO_META[kind]}"] / (3 * 128)).numpy()
        assert data.counts[gguf_name] == 3 * 128
        assert values.shape == ref.shape
        # llama.cpp multiplies f16 weights with activations rounded to f16 inside its matmuls, so the
        # activations of later matrices drift slightly: measured ~1e-4 relative (max 7e-4), not bit-exact.
        np.testing.assert_allclose(values, ref, rtol=5e-3, atol=1e-4 * ref.mean())


@pytest.mark.parametrize("suffix", [".gguf", ".dat"])
def test_imatrix_file_round_trip(imatrix_run, tmp_path, suffix):
    data, _ = imatrix_run
    p = save_imatrix(data, tmp_path / f"im{suffix}")
    back = load_imatrix(p)
    assert back.chunk_count == data.chunk_count
    assert back.datasets == data.datasets
    a, b = data.means(), back.means()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=1e-6)
    if suffix == ".gguf":
        from gguf import GGUFReader

        r = GGUFReader(p)
        assert r.get_field("general.type").contents() == "imatrix"
        names = {t.name for t in r.tensors}
        assert "blk.0.attn_q.weight.in_sum2" in names and "blk.0.attn_q.weight.counts" in names


def test_imatrix_is_used_by_the_quantizer(imatrix_run, kq_f16, tmp_path):
    data, _ = imatrix_run
    im = save_imatrix(data, tmp_path / "im.gguf")
    plain = quantize_file(kq_f16, tmp_path / "plain.gguf", "Q4_K_M", threads=2)
    weighted = quantize_file(kq_f16, tmp_path / "weighted.gguf", "Q4_K_M", threads=2, imatrix=im)
    assert weighted.imatrix == str(im)
    assert plain.size == weighted.size  # same recipe, same types
    assert plain.path.read_bytes() != weighted.path.read_bytes()  # different rounding choices


def test_imatrix_bad_files(tmp_path, kq_f16):
    bad = tmp_path / "bad.dat"
    bad.write_bytes(b"\x00\x00\x00\x00")
    with pytest.raises(QuantizeError, match="expected imatrix entries"):
        load_imatrix(bad)
    with pytest.raises(QuantizeError, match=r"general\.type = imatrix"):
        load_imatrix(kq_f16)  # a model, not an imatrix


def test_trained_micro_model_q8_and_q4(micro_model, tmp_path):
    """A trained model (the micro Code Llama, exported f32) against the issue's goals for the demo model.

    Dim 128 is not K-quantizable, so its Q4_K_M is llama.cpp's fallback mix (Q5_0/Q5_1/Q8_0). 16 chunks of
    256 tokens (4,080 predictions) leave a little sampling noise, hence 98 % rather than the 99 % goal; the
    README has the full 20k-token figures (Q8_0: KLD 0.00014, 99.4 % agreement).
    """
    q8 = quantize_file(micro_model.gguf, tmp_path / "micro.Q8_0.gguf", "Q8_0").path
    q4 = quantize_file(micro_model.gguf, tmp_path / "micro.Q4_K_M.gguf", "Q4_K_M").path
    a, b = compare_many(micro_model.gguf, [q8, q4], n_ctx=256, n_chunks=16)
    assert a.kld_mean <= 0.001 and a.top1_agreement >= 0.98
    assert b.kld_mean <= 0.02
    assert a.kld_mean < b.kld_mean
    assert abs(a.ppl_ratio - 1) < 0.01
