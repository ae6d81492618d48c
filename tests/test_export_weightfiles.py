"""``model_export.weightfiles``: PyTorch and safetensors files read without torch, and pickles that are refused.

In: files written by torch itself (``torch.save``, ``safetensors.torch.save_file``) - every float dtype,
views with storage offsets, transposed (strided) tensors, shared storages, ``nn.Parameter`` - and pickles
crafted to run code when unpickled. Out: pass/fail on bit-exact values against torch's own loader, on the
one-pass file hash, and on every crafted pickle being refused with its payload never run.
"""

from __future__ import annotations

import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model_export.checkpoints import to_float32
from model_export.errors import ExportError
from model_export.weightfiles import open_weights


def as_numpy(t: torch.Tensor) -> np.ndarray:
    """torch's values as float32 numpy (bf16 through float32, exactly)."""
    return t.detach().to(torch.float32).numpy()


def state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 10, generator=g)
    shared = torch.randn(8, 4, generator=g).to(torch.float16)
    return {
        "f32": base.clone(),
        "f16": base.to(torch.float16),
        "bf16": base.to(torch.bfloat16),
        "transposed": base.t(),  # strides (1, 10): rows are not contiguous
        "offset_view": shared[2:6],  # a view into a storage shared with the next one
        "shared_whole": shared,
        "vector": torch.randn(7, generator=g).to(torch.bfloat16),
        "param": torch.nn.Parameter(torch.randn(3, 5, generator=g)),
    }


def test_torch_zip_values_match_torch(tmp_path: Path):
    sd = state()
    path = tmp_path / "consolidated.00.pth"
    torch.save(sd, path)
    f = open_weights(path)
    try:
        assert sorted(f.tensors) == sorted(sd)
        for name, t in sd.items():
            ref = f.tensors[name]
            assert ref.shape == tuple(t.shape), name
            rows = t.shape[0]
            got = to_float32(f.rows(name, 0, rows), ref.dtype)
            assert np.array_equal(got, as_numpy(t)), name
            if t.dim() == 2:  # a slice of rows, as the converter reads them
                assert np.array_equal(to_float32(f.rows(name, 1, 3), ref.dtype), as_numpy(t[1:3])), name
        assert f.finish_sha256() == hashlib.sha256(path.read_bytes()).hexdigest()
    finally:
        f.close()


def test_safetensors_values_match_torch(tmp_path: Path):
    sd = {k: v.detach().contiguous() for k, v in state().items() if k not in ("offset_view",)}
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    f = open_weights(path)
    try:
        for name, t in sd.items():
            got = to_float32(f.rows(name, 0, t.shape[0]), f.tensors[name].dtype)
            assert np.array_equal(got, as_numpy(t)), name
    finally:
        f.close()


def test_hash_is_one_pass_in_file_order_and_exact_in_any_order(tmp_path: Path):
    path = tmp_path / "m.pth"
    torch.save({f"t{i}": torch.randn(64, 64) for i in range(6)}, path)
    want = hashlib.sha256(path.read_bytes()).hexdigest()
    f = open_weights(path)
    in_file_order = sorted(f.tensors, key=f.position)
    hashed = 0
    for name in in_file_order:  # each read is hashed right behind it: nothing is hashed twice or ahead
        f.rows(name, 0, 64)
        hashed += f.advance_hash()
        assert hashed == f.tensors[name].end
    assert f.finish_sha256() == want
    f.close()
    f = open_weights(path)
    for name in reversed(in_file_order):  # out of order: hashed ahead, still the file's digest
        f.rows(name, 0, 64)
        f.advance_hash()
    assert f.finish_sha256() == want
    f.close()


# ---------------------------------------------------------------- pickles that would run code


class Payload:
    """Unpickling calls ``func(*args)``."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return (self.func, self.args)


def _exec_marker(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def variants(marker: Path) -> dict[str, object]:
    import builtins
    import os
    import subprocess

    return {
        "builtins.open": Payload(builtins.open, str(marker), "w"),
        "builtins.exec": Payload(builtins.exec, _exec_marker(marker)),
        "builtins.eval": Payload(builtins.eval, _exec_marker(marker)),
        "os.system": Payload(os.system, f"touch {marker}"),
        "subprocess.Popen": Payload(subprocess.Popen, ["touch", str(marker)]),
        "torch.load": Payload(torch.load, str(marker)),  # a torch function outside the allowlist
        "numpy reconstruct": np.zeros(3),  # numpy's own pickling: not a tensor
    }


def _write_zip(path: Path, obj: object) -> None:
    """``torch.save``'s zip layout with an arbitrary pickle as data.pkl."""
    buf = io.BytesIO()
    pickle.Pickler(buf, protocol=2).dump(obj)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", buf.getvalue())
        z.writestr("archive/byteorder", "little")


@pytest.mark.parametrize("variant", list(variants(Path("x"))))
def test_pickles_that_run_code_are_refused(tmp_path: Path, variant: str):
    marker = tmp_path / "pwned"
    payload = variants(marker)[variant]
    path = tmp_path / "consolidated.00.pth"
    _write_zip(path, {"tok_embeddings.weight": payload})
    with pytest.raises(ExportError, match="refusing to load") as e:
        open_weights(path)
    assert str(path) in str(e.value) and "\n" not in str(e.value)
    assert not marker.exists(), "expected the pickled code not to run"


def test_allowlisted_names_with_hostile_arguments_are_refused(tmp_path: Path):
    """The allowed globals are our stand-ins: given anything but what torch.save writes, they refuse."""
    from collections import OrderedDict

    class FakeRebuild:
        def __reduce__(self):
            return (torch._utils._rebuild_tensor_v2, ("not a storage", 0, (2,), (1,), False, OrderedDict()))

    path = tmp_path / "m.pth"
    _write_zip(path, {"w": FakeRebuild()})
    with pytest.raises(ExportError, match=r"refusing to load .*expected a storage"):
        open_weights(path)


def test_old_style_pickle_stream_is_refused_unread(tmp_path: Path):
    marker = tmp_path / "pwned"
    path = tmp_path / "consolidated.00.pth"
    path.write_bytes(pickle.dumps({"w": Payload(open, str(marker), "w")}))
    with pytest.raises(ExportError, match=r"refusing to load .*old-style pickle"):
        open_weights(path)
    assert not marker.exists()
