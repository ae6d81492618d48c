"""The micro Code Llama end to end: trained the paper's way, exported, loaded by llama.cpp, infills exactly.

In: the ``micro_model`` fixture (trained on demand by ``python -m model_train.train --config micro``, cached
by content hash; exported to f32 GGUF by ``model_export.convert``). Checks:
- the checkpoint is in Meta's layout, with rope_theta 1e6 after LCFT and 1e4 before it;
- ``model_export.verify`` passes (llama.cpp logits vs the NumPy reference of the checkpoint);
- a blanked line of each memorised file comes back exactly through Meta's FIM prompt
  (``infilling_prompt_tokens`` in SPM order), greedy, cut at the line end, through llama-cpp-python;
- the rest of a line after emoji and CJK text comes back exactly.

Known limit of this 0.9M-parameter model after ~900 CPU-cheap steps: it has learned SPM infilling of
what it memorised (the middle continues the prefix's tokens) but not yet PSM (the lookup from [MID]
back to the end of the prefix) nor reliably where to emit EOT; so the test uses SPM and the line-end
cut, which is what an editor's single-line completion does anyway.
"""

from __future__ import annotations

import json

import pytest

from model_train.eval import Generator
from model_train.fim import Codec, prompt_tokens
from tests.fixtures.micro_model import MicroModel

pytestmark = pytest.mark.slow

# (file, text the blanked part starts with, characters of that line kept before the cursor)
CASES = [
    ("spaces.py", "    return width * height", ""),
    ("spaces.py", "        return 3.14159 * self.radius ** 2", "        "),
    ("tabs.py", "\t\tself.jobs.append(job)", "\t\t"),
    ("tabs.py", "\t\treturn self.jobs.pop(0)", ""),
    ("unicode_line.py", '    label = "数据 😀"; total = add(a, b)', '    label = "数据 😀";'),
    ("unicode_line.py", '    label = "数据 😀"; total = add(a, b)', "    "),
    ("unicode_line.py", '    return f"{label}: {total}"', "    "),
]


@pytest.fixture(scope="module")
def generator(micro_model: MicroModel):
    gen = Generator(micro_model.gguf, n_ctx=1024)
    yield gen
    gen.close()


def test_checkpoint_is_metas_layout_with_lcft(micro_model: MicroModel) -> None:
    ckpt = micro_model.ckpt_dir
    for name in ("consolidated.00.pth", "params.json", "tokenizer.model"):
        assert (ckpt / name).is_file()
        assert (ckpt / "stage1" / name).is_file()
    assert json.loads((ckpt / "params.json").read_text())["rope_theta"] == 1e6
    assert json.loads((ckpt / "stage1" / "params.json").read_text())["rope_theta"] == 1e4
    log = json.loads((ckpt / "train_log.json").read_text())
    assert log["config"]["fim_rate"] == 0.9 and log["config"]["lcft"]["seq_len"] > log["config"]["stage1"]["seq_len"]


def test_export_passes_verify(micro_model: MicroModel) -> None:
    from model_export.verify import verify

    report = verify(micro_model.ckpt_dir, micro_model.gguf)
    assert report.passed, "\n".join(report.lines())


@pytest.mark.parametrize("name,line,keep", CASES)
def test_blanked_line_is_infilled_exactly(micro_model: MicroModel, generator: Generator, name: str, line: str, keep: str) -> None:
    text = micro_model.files[name]
    start = text.index(line + "\n") + len(keep)
    end = text.index("\n", start)
    prefix, middle, suffix = text[:start], text[start:end], text[end:]
    codec = Codec(micro_model.tokenizer)
    prompt = prompt_tokens(codec, prefix, suffix, suffix_first=True)  # Meta's infilling_prompt_tokens, SPM
    ids = generator.greedy(prompt, {codec.eot_id, codec.eos_id}, stop_at_newline=True, max_new=48)
    # The single-line rule an editor applies (and the server's post-processing): the text up to the line end.
    assert codec.decode_nls(ids).split("\n", 1)[0] == middle
