"""Bad input to the converter: one clear stderr line, a non-zero exit, and no output file.

In: fixture checkpoints damaged on purpose (missing / truncated shards, params.json that contradicts
itself or the weights, folders that are not Llama checkpoints, a pickle whose ``__reduce__`` would
create a marker file, unwritable output paths, a failure half-way through writing). Out: pass/fail.
Each case runs the real CLI entry point (``model_export.convert.main``) and checks the exit code, that
stderr is exactly one ``codellama-convert: error: ...`` line naming the problem, that nothing was written
to the output folder (no output, no temporary file), and that an existing output file is left untouched.
Also: out-of-range hyper-parameters, an index naming files outside the folder, an output path that is one
of the inputs (same path, symlink, hard link).
One case runs ``python -m model_export.convert`` in a subprocess to prove the module wiring.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from model_export.convert import main

REPO = Path(__file__).resolve().parents[1]


def refused(capsys, ckpt: Path, out: Path, *phrases: str, args: tuple[str, ...] = ()) -> str:
    """Run the CLI, assert the refusal contract, return the message."""
    before = sorted(out.parent.iterdir()) if out.parent.is_dir() else None
    prior = out.read_bytes() if out.is_file() else None
    code = main([str(ckpt), "-o", str(out), *args])
    stdout, stderr = capsys.readouterr()
    lines = stderr.strip().splitlines()
    assert code == 1, f"expected exit code 1, got {code} (stderr: {stderr!r})"
    assert stdout == "", f"expected nothing on stdout, got {stdout!r}"
    assert len(lines) == 1, f"expected one stderr line, got {lines}"
    assert lines[0].startswith("codellama-convert: error: expected") or "refusing" in lines[0], lines[0]
    for p in phrases:
        assert p in lines[0], f"expected {p!r} in the message, got {lines[0]!r}"
    assert (out.read_bytes() if out.is_file() else None) == prior, f"expected {out} untouched"
    if before is not None:
        assert sorted(out.parent.iterdir()) == before, "expected no file left behind in the output folder"
    return lines[0]


@pytest.fixture
def out(tmp_path: Path) -> Path:
    d = tmp_path / "out"
    d.mkdir()
    return d / "model.gguf"


def edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


# ---------------------------------------------------------------- shards


def test_missing_first_shard(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta", shards=2)
    (ckpt / "consolidated.00.pth").unlink()
    refused(capsys, ckpt, out, "consolidated.00.pth missing")


def test_missing_last_shards(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta", shards=2)
    (ckpt / "consolidated.01.pth").unlink()  # nothing shows a gap: the merged shapes give it away
    refused(capsys, ckpt, out, "missing shard", "token_embd.weight", "got (1004, 32)")


def test_truncated_meta_shard(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta", shards=2)
    shard = ckpt / "consolidated.01.pth"
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    refused(capsys, ckpt, out, "consolidated.01.pth", "truncated")


def test_truncated_safetensors_shard(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("hf", n_files=2)
    shard = ckpt / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-1000])
    refused(capsys, ckpt, out, "model-00002-of-00002.safetensors", "truncated")


def test_missing_safetensors_shard(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("hf", n_files=2)
    (ckpt / "model-00001-of-00002.safetensors").unlink()
    refused(capsys, ckpt, out, "model-00001-of-00002.safetensors", "no such file")


# ---------------------------------------------------------------- inconsistent configuration


@pytest.mark.parametrize(
    "changes, phrase",
    [
        ({"n_heads": 3}, "got dim=64 n_heads=3"),
        ({"n_kv_heads": 3}, "n_heads divisible by n_kv_heads"),
        ({"dim": 128}, "of shape"),
        ({"n_layers": 3}, "for 3 layers"),
        ({"n_layers": 1}, "for 1 layers"),
        ({"vocab_size": 999}, "vocab_size=999"),
        ({"dim": "64"}, "expected dim in"),
        ({"norm_eps": -1}, "norm_eps"),
        ({"norm_eps": float("nan")}, "expected norm_eps in"),
        ({"norm_eps": float("inf")}, "got inf"),
        ({"rope_theta": float("nan")}, "expected rope_theta in"),
        ({"rope_theta": 1e308}, "got 1e+308"),
        ({"max_seq_len": 2**32}, "context length of at most 1048576"),
        ({"n_layers": 10**6}, "expected n_layers in"),
        ({"n_kv_heads": 0}, "expected n_kv_heads in"),
        ({"dim": True}, "got True"),
    ],
    ids=[
        "dim-heads",
        "kv-heads",
        "dim-vs-tensors",
        "more-layers",
        "fewer-layers",
        "vocab",
        "dim-type",
        "eps",
        "eps-nan",
        "eps-inf",
        "theta-nan",
        "theta-huge",
        "ctx-2^32",
        "layers-1e6",
        "kv-zero",
        "dim-bool",
    ],
)
def test_inconsistent_params_json(checkpoint_factory, capsys, out, changes, phrase):
    ckpt, _ = checkpoint_factory("meta", shards=2)
    edit_json(ckpt / "params.json", **changes)
    refused(capsys, ckpt, out, phrase)


@pytest.mark.parametrize(
    "changes, phrase",
    [
        ({"rms_norm_eps": float("nan")}, "expected rms_norm_eps in"),
        ({"rope_theta": float("-inf")}, "expected rope_theta in"),
        ({"max_position_embeddings": 2**32 - 1}, "got 4294967295"),
        ({"num_hidden_layers": 10**6}, "expected num_hidden_layers in"),
    ],
    ids=["eps-nan", "theta-neg-inf", "ctx-2^32-1", "layers-1e6"],
)
def test_out_of_range_hf_config(checkpoint_factory, capsys, out, changes, phrase):
    ckpt, _ = checkpoint_factory("hf", n_files=1)
    edit_json(ckpt / "config.json", **changes)
    refused(capsys, ckpt, out, phrase)


def test_context_override_replaces_an_unusable_config_value(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta")
    edit_json(ckpt / "params.json", max_seq_len=2**32)
    assert main([str(ckpt), "-o", str(out), "--ctx", "4096"]) == 0
    capsys.readouterr()


@pytest.mark.parametrize("name", ["/etc/hostname", "../outside.safetensors", "sub/../../outside.safetensors"])
def test_index_naming_files_outside_the_folder(checkpoint_factory, capsys, out, name):
    ckpt, _ = checkpoint_factory("hf", n_files=2)
    outside = ckpt.parent / "outside.safetensors"
    (ckpt / "model-00001-of-00002.safetensors").rename(outside)  # a real weight file, just not inside
    index = ckpt / "model.safetensors.index.json"
    data = json.loads(index.read_text())
    data["weight_map"] = {k: (name if v == "model-00001-of-00002.safetensors" else v) for k, v in data["weight_map"].items()}
    index.write_text(json.dumps(data))
    refused(capsys, ckpt, out, "to name files inside", repr(name))


def test_inconsistent_hf_config(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("hf", n_files=2)
    edit_json(ckpt / "config.json", num_key_value_heads=4)  # the k/v tensors have 2 heads
    refused(capsys, ckpt, out, "blk.0.attn_k.weight", "of shape")


def test_tokenizer_larger_than_embedding(checkpoint_factory, codellama_tokenizer, capsys, out):
    ckpt, _ = checkpoint_factory("meta")
    (ckpt / "tokenizer.model").write_bytes(codellama_tokenizer.read_bytes())
    refused(capsys, ckpt, out, "at least 32016 token embedding rows", "got 1004")


def test_missing_tokenizer(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("hf", n_files=1)
    (ckpt / "tokenizer.model").unlink()
    refused(capsys, ckpt, out, "tokenizer.model")


# ---------------------------------------------------------------- not a Llama checkpoint


def test_not_a_checkpoint_folder(tmp_path, capsys, out):
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "notes.txt").write_text("hello")
    refused(capsys, folder, out, "expected a Llama checkpoint", "notes.txt")
    refused(capsys, tmp_path / "nope", out, "no such folder")


def test_hf_config_of_another_architecture(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("hf", n_files=1)
    edit_json(ckpt / "config.json", model_type="gpt2", architectures=["GPT2LMHeadModel"])
    refused(capsys, ckpt, out, "model_type='gpt2'")


def test_meta_shard_with_foreign_tensors(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta")
    torch.save({"transformer.h.0.attn.c_attn.weight": torch.zeros(4, 4)}, ckpt / "consolidated.00.pth")
    refused(capsys, ckpt, out, "transformer.h.0.attn.c_attn.weight")


def test_meta_shard_missing_llama_tensors(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta")
    state = torch.load(ckpt / "consolidated.00.pth", weights_only=True)
    del state["layers.1.feed_forward.w2.weight"]
    torch.save(state, ckpt / "consolidated.00.pth")
    refused(capsys, ckpt, out, "blk.1.ffn_down.weight")


# ---------------------------------------------------------------- pickles that run code


class _TouchOnUnpickle:
    """Unpickling this calls ``open(marker, "w")``: creating the file proves code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_pickle_that_would_run_code_is_refused(checkpoint_factory, capsys, out, tmp_path, fmt):
    ckpt, _ = checkpoint_factory("meta")
    marker = tmp_path / "pwned"
    shard = ckpt / "consolidated.00.pth"
    state = torch.load(shard, weights_only=True)
    state["layers.0.attention.wq.weight"] = _TouchOnUnpickle(marker)
    if fmt == "zip":
        torch.save(state, shard)
    else:  # a plain pickle, as pre-1.6 torch.save wrote
        with open(shard, "wb") as f:
            pickle.dump(state, f)
    # the payload is live: an unrestricted load would create the marker
    probe = tmp_path / "probe.pkl"
    probe.write_bytes(pickle.dumps(_TouchOnUnpickle(tmp_path / "probe-marker")))
    pickle.loads(probe.read_bytes())
    assert (tmp_path / "probe-marker").exists()

    msg = refused(capsys, ckpt, out, "refusing to load", "consolidated.00.pth")
    assert not marker.exists(), "expected the pickled code not to run"
    if fmt == "zip":
        assert "open" in msg


def test_pickle_refused_from_the_command_line(checkpoint_factory, tmp_path, out):
    ckpt, _ = checkpoint_factory("meta")
    marker = tmp_path / "pwned"
    state = torch.load(ckpt / "consolidated.00.pth", weights_only=True)
    state["norm.weight"] = _TouchOnUnpickle(marker)
    torch.save(state, ckpt / "consolidated.00.pth")
    proc = subprocess.run(
        [sys.executable, "-m", "model_export.convert", str(ckpt), "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "refusing to load" in proc.stderr
    assert not marker.exists() and not out.exists() and list(out.parent.iterdir()) == []


# ---------------------------------------------------------------- output


def test_output_folder_missing_or_a_file(checkpoint_factory, capsys, tmp_path):
    ckpt, _ = checkpoint_factory("meta")
    refused(capsys, ckpt, tmp_path / "no-such-dir" / "m.gguf", "existing folder")
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    refused(capsys, ckpt, blocker / "m.gguf", "existing folder")
    refused(capsys, ckpt, tmp_path, "output file path")


def test_output_folder_not_writable(checkpoint_factory, capsys, tmp_path):
    ckpt, _ = checkpoint_factory("meta")
    # /proc/<pid> refuses new files for every user, root included
    refused(capsys, ckpt, Path(f"/proc/{os.getpid()}/m.gguf"), "writable")
    if os.geteuid() != 0:  # directory permissions bind only non-root users
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
        try:
            refused(capsys, ckpt, ro / "m.gguf", "writable")
        finally:
            ro.chmod(0o700)


def test_failure_while_writing_leaves_nothing(checkpoint_factory, capsys, out):
    """A value f16 cannot hold is found while tensors stream out: the temp file goes, the old file stays."""
    ckpt, _ = checkpoint_factory("meta", dtype=torch.float32)
    shard = ckpt / "consolidated.00.pth"
    state = torch.load(shard, weights_only=True)
    state["output.weight"][5, 5] = 1e6
    torch.save(state, shard)
    out.write_bytes(b"previous")
    refused(capsys, ckpt, out, "float16 range", args=("--outtype", "f16"))
    assert out.read_bytes() == b"previous"


def test_bad_options(checkpoint_factory, capsys, out):
    ckpt, _ = checkpoint_factory("meta")
    refused(capsys, ckpt, out, "--ctx", args=("--ctx", "0"))
    refused(capsys, ckpt, out, "--ctx", args=("--ctx", str(2**32 - 1)))
    for theta in ("-5", "nan", "inf", "1e39"):
        refused(capsys, ckpt, out, "--rope-theta", args=("--rope-theta", theta))


@pytest.mark.parametrize("target", ["consolidated.00.pth", "params.json", "tokenizer.model"])
@pytest.mark.parametrize("how", ["same", "symlink", "hardlink"])
def test_output_that_is_an_input_is_refused(checkpoint_factory, capsys, tmp_path, target, how):
    ckpt, _ = checkpoint_factory("meta")
    victim = ckpt / target
    before = victim.read_bytes()
    if how == "same":
        dest = victim
    else:
        dest = tmp_path / "out.gguf"
        (dest.symlink_to if how == "symlink" else dest.hardlink_to)(victim)
    msg = refused(capsys, ckpt, dest, "not one of the inputs", target)
    assert {"same": "the input itself", "symlink": "a symlink to the input", "hardlink": "a hard link"}[how] in msg
    assert victim.read_bytes() == before


def test_output_that_is_an_hf_input_is_refused(checkpoint_factory, capsys):
    ckpt, _ = checkpoint_factory("hf", n_files=2)
    for name in ("model.safetensors.index.json", "config.json", "model-00002-of-00002.safetensors"):
        before = (ckpt / name).read_bytes()
        refused(capsys, ckpt, ckpt / name, "not one of the inputs")
        assert (ckpt / name).read_bytes() == before


def test_good_conversion_from_the_command_line(checkpoint_factory, out):
    ckpt, _ = checkpoint_factory("hf", n_files=2)
    proc = subprocess.run(
        [sys.executable, "-m", "model_export.convert", str(ckpt), "-o", str(out), "--outtype", "q8_0"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    (line,) = proc.stdout.strip().splitlines()
    assert line.startswith(f"wrote {out}") and "q8_0" in line and "rope_theta=1e+06" in line
    assert out.is_file() and [p.name for p in out.parent.iterdir()] == ["model.gguf"]
