"""The code the quality report and the importance matrix are measured on.

In: nothing (the defaults), a file, or a directory. Out: one text (files joined by blank lines, in sorted
order so runs are reproducible) and a short name for it that goes into reports and imatrix files.

The defaults are Python standard-library modules of the running interpreter: always there offline, real
code, and disjoint between the two roles - the importance matrix is *computed* on one set (``imatrix``) and
the report *measures* on the other (``eval``), so the report never rewards fitting the imatrix corpus. The
demo model (``model_train``) trains on most of the stdlib; :data:`EVAL_MODULES` are files of its held-out
split, so its numbers are on code it has not seen.
"""

from __future__ import annotations

import os
import sysconfig
from pathlib import Path

from quantize.errors import QuantizeError

# Held out twice: in the demo model's held-out split (model_train.data hashes each relative path, 1 in 20
# held out, so the split is the same on every Python version) and not in the test fixtures' TRAIN_FILES.
# All exist from Python 3.11 through 3.13. ~238 kB of code: over 50k tokens with Code Llama's vocab, more
# with the small demo vocab, so the default 40 chunks of 512 (20,440 scored tokens) always fit.
EVAL_MODULES = (
    "getopt.py",
    "html/__init__.py",
    "http/client.py",
    "importlib/abc.py",
    "logging/handlers.py",
    "multiprocessing/util.py",
    "platform.py",
    "py_compile.py",
    "secrets.py",
    "types.py",
    "unittest/main.py",
    "unittest/result.py",
)
# Disjoint from EVAL_MODULES: the importance matrix never sees the text the report scores.
IMATRIX_MODULES = (
    "inspect.py",
    "optparse.py",
    "traceback.py",
    "typing.py",
)


def stdlib_dir() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def default_files(role: str) -> list[Path]:
    names = {"eval": EVAL_MODULES, "imatrix": IMATRIX_MODULES}.get(role)
    if names is None:
        raise QuantizeError(f"expected corpus role 'eval' or 'imatrix', got {role!r}")
    root = stdlib_dir()
    files = [root / n for n in names if (root / n).is_file()]
    if not files:
        raise QuantizeError(f"expected Python standard-library sources under {root}, got none")
    return files


def corpus_files(path: str | os.PathLike[str] | None, role: str = "eval") -> list[Path]:
    if path is None:
        return default_files(role)
    p = Path(path)
    if p.is_file():
        return [p]
    if p.is_dir():
        files = sorted(
            f
            for f in p.rglob("*")
            if f.is_file() and f.suffix in {".py", ".txt", ".c", ".h", ".js", ".ts", ".rs", ".go", ".java"}
        )
        if not files:
            raise QuantizeError(f"expected source files under {p}, got none")
        return files
    raise QuantizeError(f"expected a corpus file or directory, got nothing at {p}")


def corpus_text(path: str | os.PathLike[str] | None, role: str = "eval") -> tuple[str, str]:
    """(text, name) of the corpus; ``name`` is ``stdlib:<files>`` for the defaults, else the path."""
    files = corpus_files(path, role)
    text = "\n\n".join(f.read_text(encoding="utf-8", errors="replace") for f in files)
    if path is None:
        name = f"python{sysconfig.get_python_version()}-stdlib:" + ",".join(str(f.relative_to(stdlib_dir())) for f in files)
    else:
        name = str(path)
    return text, name
