"""Quantized builds: every type through llama.cpp's quantizer, the K-quant mix, the CLI, every bad input.

The model is a random Code-Llama-shaped checkpoint from ``tests/fixtures/checkpoints.py`` exported to f16
with ``model_export.convert``. It uses dim 256 (not the fixtures' usual 64) because llama.cpp's K-quants pack
256 weights per super-block (QK_K): with rows of 64 every K-quant silently falls back to a legacy type and the
mixing this file checks would be invisible. ``test_dim64_falls_back`` pins that fallback down.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGUFReader, GGUFValueType, GGUFWriter

from model_export.convert import convert
from quantize.__main__ import main as quantize_main
from quantize.errors import QuantizeError, llama_session
from quantize.gguf_info import read_info
from quantize.imatrix import ImatrixData, save_imatrix
from quantize.quantize import TARGETS, TYPES, quantize_file
from tests.fixtures.checkpoints import TINY

REPO = Path(__file__).resolve().parents[1]

# dim 256 -> K-quant rows; ffn hidden 768 (multiple_of 256) -> ffn_down rows are K-quantizable too.
KQ_ARGS = replace(TINY, dim=256, n_heads=4, n_kv_heads=2, multiple_of=256)


@pytest.fixture(scope="session")
def kq_model(checkpoint_factory):
    """(checkpoint folder, the float32 PyTorch model that is exactly its weights)."""
    return checkpoint_factory("meta", args=replace(KQ_ARGS, vocab_size=1004), dtype=torch.bfloat16, seed=1)


@pytest.fixture(scope="session")
def kq_checkpoint(kq_model) -> Path:
    return kq_model[0]


@pytest.fixture(scope="session")
def kq_f16(kq_checkpoint, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kq") / "kq.F16.gguf"
    convert(kq_checkpoint, out, outtype="f16")
    return out


@pytest.fixture(scope="session")
def tiny_f16(checkpoint_factory, tmp_path_factory) -> Path:
    ckpt, _ = checkpoint_factory("meta", seed=2)
    out = tmp_path_factory.mktemp("tiny") / "tiny.F16.gguf"
    convert(ckpt, out, outtype="f16")
    return out


@pytest.fixture(scope="session")
def all_builds(kq_f16, tmp_path_factory) -> dict[str, Path]:
    """Every supported type built once for the session (2M parameters: well under a second each)."""
    out = tmp_path_factory.mktemp("builds")
    return {t: quantize_file(kq_f16, out / f"kq.{t}.gguf", t, threads=2).path for t in TYPES}


def _types(path: Path) -> dict[str, str]:
    """tensor name -> GGML type name, read back with gguf-py."""
    return {t.name: t.tensor_type.name for t in GGUFReader(path).tensors}


# ---------------------------------------------------------------- every type


@pytest.mark.parametrize("qtype", list(TYPES))
def test_each_type_loads_and_gives_finite_logits(qtype, all_builds, kq_f16):
    path = all_builds[qtype]
    info = read_info(path)
    ref = read_info(kq_f16)
    assert info.n_params == ref.n_params
    assert info.tensor_bytes <= ref.tensor_bytes or qtype == "F32"
    with llama_session(path, n_ctx=64, threads=2) as s:
        toks = s.model.tokenize("def add(a, b):\n    return a + b\n")
        logits = s.evaluate([s.model.bos] + toks)
    assert logits.shape == (len(toks) + 1, 1004)
    assert np.isfinite(logits).all()
    assert logits.std() > 0.1  # not a zeroed tensor


def test_sizes_follow_bits(all_builds):
    bpw = {t: read_info(p).bits_per_weight for t, p in all_builds.items()}
    # Ordering llama.cpp's types promise; a mix-up of ftype ids would break it.
    assert bpw["Q2_K"] < bpw["Q3_K_M"] < bpw["Q4_K_M"] < bpw["Q5_K_M"] < bpw["Q6_K"] < bpw["Q8_0"] < bpw["F16"]
    assert bpw["Q4_0"] < bpw["Q4_1"] < bpw["Q5_0"] < bpw["Q5_1"] < bpw["Q8_0"]
    assert bpw["F16"] == pytest.approx(bpw["BF16"])
    assert 8.4 < bpw["Q8_0"] < 8.7  # 34 bytes per 32 weights (+ f32 norms)


def test_k_quant_mix_is_visible(all_builds):
    """Q4_K_M keeps output.weight and some attn_v / ffn_down at Q6_K; Q4_K_S keeps fewer; Q6_K is uniform."""
    m = _types(all_builds["Q4_K_M"])
    assert m["output.weight"] == "Q6_K"
    assert m["blk.0.attn_q.weight"] == "Q4_K"
    assert m["blk.0.ffn_gate.weight"] == "Q4_K"
    assert "Q6_K" in {m["blk.0.attn_v.weight"], m["blk.1.attn_v.weight"]}
    assert "Q6_K" in {m["blk.0.ffn_down.weight"], m["blk.1.ffn_down.weight"]}
    assert m["blk.0.attn_norm.weight"] == "F32"  # 1-D tensors are never quantized
    s = _types(all_builds["Q4_K_S"])
    n_q6 = lambda d: sum(v == "Q6_K" for v in d.values())  # noqa: E731
    assert n_q6(s) < n_q6(m)
    q6 = _types(all_builds["Q6_K"])
    assert {v for k, v in q6.items() if k.endswith(".weight") and "norm" not in k} == {"Q6_K"}
    q3 = _types(all_builds["Q3_K_M"])
    assert {"Q3_K", "Q4_K"} <= set(q3.values()) or {"Q3_K", "Q5_K"} <= set(q3.values())


def test_dim64_falls_back(tiny_f16, tmp_path):
    """Rows of 64 weights cannot hold a 256-weight K-quant super-block: llama.cpp substitutes legacy types."""
    r = quantize_file(tiny_f16, tmp_path / "t.gguf", "Q4_K_M", threads=2)
    kinds = set(_types(r.path).values())
    assert not kinds & {"Q4_K", "Q5_K", "Q6_K"}
    assert kinds & {"Q5_0", "Q5_1", "Q8_0", "Q4_0", "Q4_1"}


def test_output_and_embedding_type_overrides(kq_f16, tmp_path):
    r = quantize_file(kq_f16, tmp_path / "o.gguf", "Q4_K_M", output_tensor_type="Q8_0", token_embedding_type="Q8_0")
    t = _types(r.path)
    assert t["output.weight"] == "Q8_0"
    assert t["token_embd.weight"] == "Q8_0"


# ---------------------------------------------------------------- CLI


def test_cli_single_type(kq_f16, tmp_path, capsys):
    out = tmp_path / "m.gguf"
    assert quantize_main([str(kq_f16), "-o", str(out), "--type", "q8_0", "--threads", "2"]) == 0
    assert read_info(out).type_counts.get("Q8_0", 0) > 0
    assert "Q8_0" in capsys.readouterr().out


def test_cli_target_and_all(kq_f16, tmp_path):
    d = tmp_path / "cpu"
    assert quantize_main([str(kq_f16), "-o", str(d), "--target", "cpu", "--threads", "2"]) == 0
    assert sorted(p.name for p in d.iterdir()) == sorted(f"kq.{t}.gguf" for t in TARGETS["cpu"])
    d2 = tmp_path / "all"
    assert quantize_main([str(kq_f16), "-o", str(d2), "--all", "--threads", "2"]) == 0
    assert len(list(d2.glob("kq.*.gguf"))) == len(TYPES)
    assert not list(d2.glob(".*part"))


def test_console_script_subprocess(kq_f16, tmp_path):
    """The real entry point, as a user runs it: exit status and one error line on stderr."""
    out = tmp_path / "x.gguf"
    ok = subprocess.run([sys.executable, "-m", "quantize", str(kq_f16), "-o", str(out), "--type", "Q4_0"],
                        capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    bad = subprocess.run([sys.executable, "-m", "quantize", str(kq_f16), "-o", str(out), "--type", "Q4_0"],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 1
    assert bad.stderr.strip().count("\n") == 0 and bad.stderr.startswith("codellama-quantize: error: expected no file")


# ---------------------------------------------------------------- bad input


def _run_err(argv: list[str], capsys) -> str:
    rc = quantize_main(argv)
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert err.startswith("codellama-quantize: error: ") and "\n" not in err, err
    return err


def _no_output(d: Path, name: str) -> None:
    assert not (d / name).exists()
    assert not [p for p in d.iterdir() if p.name.endswith(".part")]


def test_bad_not_a_gguf(tmp_path, capsys):
    src = tmp_path / "model.gguf"
    src.write_text("print('hello')\n")
    err = _run_err([str(src), "-o", str(tmp_path / "out.gguf"), "--type", "Q4_0"], capsys)
    assert "expected a GGUF file" in err
    _no_output(tmp_path, "out.gguf")


def test_bad_missing_input(tmp_path, capsys):
    err = _run_err([str(tmp_path / "nope.gguf"), "-o", str(tmp_path / "out.gguf"), "--type", "Q4_0"], capsys)
    assert "no file" in err


@pytest.mark.parametrize("keep", [0.5, 0.999, 200])
def test_bad_truncated(kq_f16, tmp_path, capsys, keep):
    """Cut in the tensor data (half, last bytes) and inside the header (200 bytes)."""
    src = tmp_path / "cut.gguf"
    data = kq_f16.read_bytes()
    n = int(len(data) * keep) if keep < 1 else keep
    src.write_bytes(data[:n])
    err = _run_err([str(src), "-o", str(tmp_path / "out.gguf"), "--type", "Q4_K_M"], capsys)
    assert "truncated" in err
    _no_output(tmp_path, "out.gguf")


def test_bad_already_quantized(all_builds, tmp_path, capsys):
    src = all_builds["Q8_0"]
    err = _run_err([str(src), "-o", str(tmp_path / "re.gguf"), "--type", "Q4_0"], capsys)
    assert "expected an unquantized" in err and "--allow-requantize" in err
    _no_output(tmp_path, "re.gguf")
    assert quantize_main([str(src), "-o", str(tmp_path / "re.gguf"), "--type", "Q4_0", "--allow-requantize"]) == 0
    assert "Q4_0" in set(_types(tmp_path / "re.gguf").values())


def test_bad_unknown_type(kq_f16, tmp_path, capsys):
    err = _run_err([str(kq_f16), "-o", str(tmp_path / "u.gguf"), "--type", "Q9_X"], capsys)
    assert "expected a type among Q4_0" in err and "'Q9_X'" in err
    err = _run_err([str(kq_f16), "-o", str(tmp_path / "u.gguf"), "--type", "Q4_0", "--output-tensor-type", "Q7"], capsys)
    assert "output tensor type" in err
    _no_output(tmp_path, "u.gguf")


def test_bad_existing_output(kq_f16, tmp_path, capsys):
    out = tmp_path / "exists.gguf"
    out.write_bytes(b"keep me")
    err = _run_err([str(kq_f16), "-o", str(out), "--type", "Q4_0"], capsys)
    assert "--force" in err
    assert out.read_bytes() == b"keep me"
    assert quantize_main([str(kq_f16), "-o", str(out), "--type", "Q4_0", "--force"]) == 0
    assert read_info(out).type_counts.get("Q4_0", 0) > 0


def test_bad_failure_midway_leaves_nothing(kq_f16, tmp_path, capsys):
    """llama.cpp writes tensors in order and throws at the last layer's ffn_down (imatrix of the wrong size).

    The temporary file already holds the earlier tensors when that happens; it must be gone afterwards,
    and an existing output (with --force) must be left untouched.
    """
    info = read_info(kq_f16)
    data = ImatrixData(chunk_size=64, chunk_count=1, datasets=["test"])
    for t in info.tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            n = t.shape[0] if t.name != "blk.1.ffn_down.weight" else t.shape[0] - 256
            data.sums[t.name] = np.ones(n)
            data.counts[t.name] = 1
    im = save_imatrix(data, tmp_path / "bad.imatrix.gguf")
    out = tmp_path / "mid.gguf"
    err = _run_err([str(kq_f16), "-o", str(out), "--type", "Q4_K_M", "--imatrix", str(im)], capsys)
    assert "imatrix size" in err and "blk.1.ffn_down.weight" in err
    _no_output(tmp_path, "mid.gguf")
    out.write_bytes(b"old build")
    _run_err([str(kq_f16), "-o", str(out), "--type", "Q4_K_M", "--imatrix", str(im), "--force"], capsys)
    assert out.read_bytes() == b"old build"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_api_raises_quantize_error(kq_f16, tmp_path):
    with pytest.raises(QuantizeError, match="expected a type among"):
        quantize_file(kq_f16, tmp_path / "a.gguf", "Q1_Z")
    with pytest.raises(QuantizeError, match=r"not one of the inputs, got .*, the input itself"):
        shutil.copy(kq_f16, tmp_path / "same.gguf")
        quantize_file(tmp_path / "same.gguf", tmp_path / "same.gguf", "Q4_0", force=True)


# ---------------------------------------------------------------- pipeline


def test_pipeline_checkpoint_to_builds(kq_checkpoint, tmp_path, capsys):
    from quantize.pipeline import main as pipeline_main

    out = tmp_path / "builds"
    rc = pipeline_main([str(kq_checkpoint), "-o", str(out), "--types", "Q4_K_M,Q8_0", "--name", "kq",
                        "--imatrix", "auto", "--imatrix-chunks", "4", "--ctx", "128", "--chunks", "4"])  # fmt: skip
    assert rc == 0, capsys.readouterr().err
    m = json.loads((out / "manifest.json").read_text())
    assert len(m["source"]["sha256"]) == 64
    assert m["imatrix"] == "kq.imatrix.gguf" and (out / "kq.imatrix.gguf").is_file()
    assert [f["imatrix"] for f in m["files"]] == [None, "kq.imatrix.gguf", "kq.imatrix.gguf"]
    assert [f["type"] for f in m["files"]] == ["F16", "Q4_K_M", "Q8_0"]
    for f in m["files"]:
        assert (out / f["file"]).stat().st_size == f["size_bytes"]
        assert f["rope"]["freq_base"] == pytest.approx(1e6)
        assert f["context_length"] == 16384
        assert f["bits_per_weight"] > 0
    q4, q8 = m["files"][1]["quality"], m["files"][2]["quality"]
    assert q8["kld_mean"] < q4["kld_mean"]
    assert q8["tokens"] == 4 * 127
    # A second run refuses to overwrite, naming what exists.
    assert pipeline_main([str(kq_checkpoint), "-o", str(out), "--types", "Q8_0", "--name", "kq", "--no-report"]) == 1
    assert "manifest.json" in capsys.readouterr().err


def test_imatrix_of_another_model_is_refused(kq_f16, tmp_path, capsys):
    data = ImatrixData(chunk_size=64, chunk_count=1, datasets=["test"])
    data.sums["model.layers.0.mlp.down_proj.weight"] = np.ones(256)  # Hugging Face names: not this GGUF's
    data.counts["model.layers.0.mlp.down_proj.weight"] = 1
    im = save_imatrix(data, tmp_path / "other.imatrix.gguf")
    err = _run_err([str(kq_f16), "-o", str(tmp_path / "o.gguf"), "--type", "Q4_K_M", "--imatrix", str(im)], capsys)
    assert "none of which match" in err
    _no_output(tmp_path, "o.gguf")


# ---------------------------------------------------------------- outputs: inputs, folders, threads, permissions


@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_output_that_is_the_input_is_refused(kq_f16, tmp_path, capsys, how):
    src = tmp_path / "in.gguf"
    shutil.copy(kq_f16, src)
    before = src.read_bytes()
    dest = src if how == "same" else tmp_path / "out.gguf"
    if how == "symlink":
        dest.symlink_to(src)
    elif how == "hardlink":
        dest.hardlink_to(src)
    err = _run_err([str(src), "-o", str(dest), "--type", "Q8_0", "--force"], capsys)
    assert "not one of the inputs" in err
    assert src.read_bytes() == before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_output_that_is_the_imatrix_is_refused(imatrix_file, kq_f16, tmp_path, capsys):
    err = _run_err([str(kq_f16), "-o", str(imatrix_file), "--type", "Q4_K_M", "--imatrix", str(imatrix_file), "--force"], capsys)
    assert "not one of the inputs" in err


@pytest.fixture
def imatrix_file(kq_f16, tmp_path) -> Path:
    data = ImatrixData(chunk_size=64, chunk_count=1, datasets=["test"])
    for t in read_info(kq_f16).tensors:
        if t.name.startswith("blk.") and len(t.shape) == 2:
            data.sums[t.name] = np.ones(t.shape[0])
            data.counts[t.name] = 1
    return save_imatrix(data, tmp_path / "ok.imatrix.gguf")


def test_unwritable_output_folder_is_one_line(kq_f16, tmp_path, capsys):
    # /proc/<pid> refuses new files for every user, root included
    err = _run_err([str(kq_f16), "-o", f"/proc/{os.getpid()}/q.gguf", "--type", "Q8_0"], capsys)
    assert "writable folder" in err
    err = _run_err([str(kq_f16), "-o", str(tmp_path / "missing" / "q.gguf"), "--type", "Q8_0"], capsys)
    assert "existing folder" in err
    err = _run_err([str(kq_f16), "-o", f"/proc/{os.getpid()}/builds", "--type", "Q8_0,Q4_0"], capsys)
    assert "output folder" in err


def test_threads_are_clamped_with_a_message(kq_f16, tmp_path, capsys, caplog):
    out = tmp_path / "t.gguf"
    assert quantize_main([str(kq_f16), "-o", str(out), "--type", "Q8_0", "--threads", "100000"]) == 0
    assert "instead of the 100000 asked for" in caplog.text  # the CLI's stderr log; caplog under pytest
    assert read_info(out).type_counts.get("Q8_0", 0) > 0
    err = _run_err([str(kq_f16), "-o", str(tmp_path / "n.gguf"), "--type", "Q8_0", "--threads", "-3"], capsys)
    assert "positive number of threads, got -3" in err


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_outputs_get_normal_permissions(kq_f16, tmp_path, umask):
    old = os.umask(umask)
    try:
        r = quantize_file(kq_f16, tmp_path / "p.gguf", "Q8_0", threads=2)
    finally:
        os.umask(old)
    assert stat.S_IMODE(r.path.stat().st_mode) == 0o666 & ~umask


# ---------------------------------------------------------------- signals

# Runs the real CLI in a child that signals itself at a fixed point: from inside the worker thread, just
# before llama.cpp's quantizer starts (so the signal arrives while a native call is running). The patch
# only adds the signal; llama_model_quantize itself is the real one.
_SIGNAL_DURING_QUANTIZE = """
import os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, also when the test runner was started in the background (SIGINT ignored)
import llama_cpp
real = llama_cpp.llama_model_quantize
def signal_then_quantize(*args):
    os.kill(os.getpid(), signal.{sig})
    return real(*args)
llama_cpp.llama_model_quantize = signal_then_quantize
from quantize.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig, code", [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_during_quantize_cleans_up(kq_f16, tmp_path, sig, code):
    out = tmp_path / "q" / "sig.gguf"
    out.parent.mkdir()
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_DURING_QUANTIZE.format(sig=sig), str(kq_f16), "-o", str(out), "--type", "Q4_K_M"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == code, proc.stderr
    assert proc.stderr.strip() == "codellama-quantize: interrupted, no output written"
    assert list(out.parent.iterdir()) == []


def test_leftover_of_a_killed_run_is_removed_next_time(kq_f16, tmp_path, caplog):
    out = tmp_path / "k.gguf"
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_DURING_QUANTIZE.format(sig="SIGKILL"), str(kq_f16), "-o", str(out), "--type", "Q8_0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == -9
    (left,) = [p for p in tmp_path.iterdir() if p.name.endswith(".part")]
    assert left.name.startswith(".k.gguf.codellama-")
    assert quantize_main([str(kq_f16), "-o", str(out), "--type", "Q8_0"]) == 0
    assert f"removed {left}" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.gguf"]


# ---------------------------------------------------------------- headers llama.cpp would abort or stall on


def _with_metadata(src: Path, dst: Path, changes: dict[str, tuple[object, GGUFValueType]]) -> Path:
    """A copy of ``src`` with some metadata values replaced (gguf-py's own copy routine)."""
    from gguf.scripts.gguf_new_metadata import MetadataDetails, copy_with_new_metadata

    reader = GGUFReader(src)
    writer = GGUFWriter(dst, arch="llama")
    copy_with_new_metadata(reader, writer, {k: MetadataDetails(t, v) for k, (v, t) in changes.items()}, [])
    return dst


@pytest.mark.parametrize(
    "key, value, vtype, phrase",
    [
        ("llama.block_count", 0, GGUFValueType.UINT32, "block_count"),  # llama.cpp: SIGABRT
        ("llama.block_count", 1000, GGUFValueType.UINT32, "block_count"),  # llama.cpp: SIGABRT
        ("llama.attention.layer_norm_rms_epsilon", float("nan"), GGUFValueType.FLOAT32, "epsilon"),
        ("llama.attention.head_count", 0, GGUFValueType.UINT32, "head_count"),
        ("llama.context_length", 2**32 - 1, GGUFValueType.UINT32, "context_length"),
    ],
    ids=["blocks-0", "blocks-1000", "eps-nan", "heads-0", "ctx-2^32-1"],
)
def test_headers_llama_cpp_trusts_are_checked_first(kq_f16, tmp_path, capsys, key, value, vtype, phrase):
    src = _with_metadata(kq_f16, tmp_path / "bad.gguf", {key: (value, vtype)})
    capsys.readouterr()
    err = _run_err([str(src), "-o", str(tmp_path / "q.gguf"), "--type", "Q4_K_M"], capsys)
    assert err.startswith("codellama-quantize: error: expected") and phrase in err, err
    _no_output(tmp_path, "q.gguf")


_SIGNAL_DURING_DECODE = """
import os, signal, sys
import llama_cpp
real = llama_cpp.llama_decode
def signal_then_decode(*args):
    os.kill(os.getpid(), signal.SIGTERM)  # lands when this llama.cpp call returns
    return real(*args)
llama_cpp.llama_decode = signal_then_decode
from quantize.imatrix import main
sys.exit(main(sys.argv[1:]))
"""


def test_signal_during_imatrix_is_one_line(kq_f16, tmp_path):
    out = tmp_path / "m.imatrix.gguf"
    proc = subprocess.run(
        [sys.executable, "-c", _SIGNAL_DURING_DECODE, str(kq_f16), "-o", str(out), "--ctx", "64", "--tokens", "256"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 143, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "python -m quantize.imatrix: interrupted, no output written"
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []
