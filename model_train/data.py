"""Training data: the CPython standard library of the running interpreter, near-deduplicated, split by file.

In: the ``.py`` files under ``sysconfig.get_paths()["stdlib"]`` (present offline on every machine that
runs Python). Out: a data manifest (JSON, shipped in ``model_train/data/``) listing every kept file by its
path relative to the stdlib root, its sha256 and its split (``train`` or ``heldout``), plus the files
dropped as near-duplicates; and ``load_corpus(manifest)``, which reads exactly those files back.

Choices, and why:
- Test suites (``test/``, ``tests/``, ``idle_test/``) and ``site-packages`` are left out: the tests are
  mostly generated tables and repetitive asserts, and installed packages differ from machine to machine.
  Files over 200 kB are mostly data (``pydoc_data/topics.py``) and are left out too, and so are files
  that say near their top that they were generated (the ``encodings/cp*.py`` tables, ``keyword.py``):
  tables of numbers teach nothing about code and would dominate line-level evaluation.
- Near-duplicates (copies of a module kept in two places, vendored variants) would leak held-out text
  into training. We compare every pair of files by MinHash over 5-word shingles (64 hash functions,
  estimated Jaccard >= 0.8) and keep the first path of each group in sorted order.
- The split is a pure function of the relative path (sha256 of the path, 1 in 20 held out), so a file
  keeps its split when others are added or removed, and retraining needs nothing but this module.

A manifest records the interpreter version it was made with. On another patch release a few files may
differ; ``load_corpus`` then skips files whose sha256 no longer matches and says how many it skipped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import re
import sys
import sysconfig
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from codellama_core.outfile import write_file
from model_train.errors import TrainError

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_MANIFEST = DATA_DIR / f"stdlib-{sys.version_info.major}.{sys.version_info.minor}.json"

EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"})
MAX_BYTES = 200_000
MIN_BYTES = 100
HELDOUT_ONE_IN = 20
DEDUP_THRESHOLD = 0.8
NUM_PERM = 64
SHINGLE = 5
GENERATED = re.compile(r"\b(auto-?generated|generated (from|by|with)|do not edit)\b", re.IGNORECASE)


@dataclass(frozen=True)
class SourceFile:
    path: str  # relative to the stdlib root, with forward slashes
    text: str
    sha256: str


@dataclass
class Corpus:
    train: list[SourceFile] = field(default_factory=list)
    heldout: list[SourceFile] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # listed in the manifest, missing or changed here


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def split_of(rel_path: str) -> str:
    """``heldout`` for one path in HELDOUT_ONE_IN, chosen by the path's hash; ``train`` otherwise."""
    h = int(hashlib.sha256(rel_path.encode("utf-8")).hexdigest()[:8], 16)
    return "heldout" if h % HELDOUT_ONE_IN == 0 else "train"


def _read(path: Path) -> tuple[str, str] | None:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text, hashlib.sha256(raw).hexdigest()


def scan(root: Path | None = None) -> list[SourceFile]:
    """Every eligible ``.py`` file under ``root`` (default: this interpreter's stdlib), sorted by path."""
    root = root or stdlib_root()
    out = []
    for p in sorted(root.rglob("*.py")):
        rel = p.relative_to(root)
        if any(part in EXCLUDED_DIRS for part in rel.parts[:-1]) or not p.is_file():
            continue
        size = p.stat().st_size
        if not MIN_BYTES <= size <= MAX_BYTES:
            continue
        got = _read(p)
        if got is not None and not GENERATED.search(got[0][:1000]):
            out.append(SourceFile(rel.as_posix(), *got))
    return out


def _minhash(text: str, salts: np.ndarray) -> np.ndarray:
    """64 MinHash values of the file's set of 5-word shingles (words = identifiers, numbers, symbols)."""
    words = re.findall(r"\w+|[^\w\s]", text)
    if len(words) < SHINGLE:
        words = words + [""] * (SHINGLE - len(words))
    shingles = {" ".join(words[i : i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}
    base = np.fromiter(
        (int.from_bytes(hashlib.blake2b(s.encode(), digest_size=8).digest(), "little") for s in shingles),
        dtype=np.uint64,
        count=len(shingles),
    )
    # h_i(x) = (x XOR salt_i) * odd constant (mod 2^64): cheap, independent-enough permutations.
    mixed = (base[None, :] ^ salts[:, None]) * np.uint64(0x9E3779B97F4A7C15)
    return mixed.min(axis=1)


def near_dedup(files: list[SourceFile], threshold: float = DEDUP_THRESHOLD) -> tuple[list[SourceFile], dict[str, str]]:
    """Drop files whose estimated Jaccard similarity to an earlier (kept) file is >= threshold.

    Returns the kept files and {dropped path: the kept path it duplicates}.
    """
    salts = np.random.default_rng(0).integers(0, 2**63, size=NUM_PERM, dtype=np.int64).astype(np.uint64)
    sigs = np.stack([_minhash(f.text, salts) for f in files]) if files else np.zeros((0, NUM_PERM), np.uint64)
    kept_idx: list[int] = []
    dropped: dict[str, str] = {}
    with np.errstate(over="ignore"):
        for i, f in enumerate(files):
            if kept_idx:
                sim = (sigs[kept_idx] == sigs[i]).mean(axis=1)
                j = int(sim.argmax())
                if sim[j] >= threshold:
                    dropped[f.path] = files[kept_idx[j]].path
                    continue
            kept_idx.append(i)
    return [files[i] for i in kept_idx], dropped


def build_manifest(root: Path | None = None) -> dict:
    with np.errstate(over="ignore"):
        files = scan(root)
    kept, dropped = near_dedup(files)
    return {
        "source": "CPython standard library of the interpreter that ran model_train.data",
        "python": ".".join(map(str, sys.version_info[:3])),
        "rules": {
            "excluded_dirs": sorted(EXCLUDED_DIRS),
            "bytes": [MIN_BYTES, MAX_BYTES],
            "generated": GENERATED.pattern,
            "near_dedup": f"MinHash {NUM_PERM} perms over {SHINGLE}-word shingles, Jaccard >= {DEDUP_THRESHOLD}",
            "split": f"heldout iff int(sha256(path)[:8], 16) % {HELDOUT_ONE_IN} == 0",
        },
        "files": [{"path": f.path, "sha256": f.sha256, "split": split_of(f.path)} for f in kept],
        "near_duplicates": [{"path": p, "duplicate_of": q} for p, q in sorted(dropped.items())],
    }


def load_corpus(manifest_path: Path = DEFAULT_MANIFEST, root: Path | None = None) -> Corpus:
    """Read back exactly the files a manifest lists, checking each sha256."""
    if not manifest_path.is_file():
        raise TrainError(f"expected a data manifest at {manifest_path}, got no file (run python -m model_train.data)")
    manifest = json.loads(manifest_path.read_text())
    root = root or stdlib_root()
    corpus = Corpus()
    for entry in manifest["files"]:
        p = root / entry["path"]
        got = _read(p) if p.is_file() else None
        if got is None or got[1] != entry["sha256"]:
            corpus.skipped.append(entry["path"])
            continue
        sf = SourceFile(entry["path"], got[0], got[1])
        (corpus.heldout if entry["split"] == "heldout" else corpus.train).append(sf)
    if corpus.skipped:
        log.warning(
            "%d of %d manifest files are missing or differ on this interpreter; skipped",
            len(corpus.skipped),
            len(manifest["files"]),
        )
    if not corpus.train or not corpus.heldout:
        raise TrainError(
            f"expected train and held-out files from {manifest_path}, got "
            f"{len(corpus.train)} train and {len(corpus.heldout)} held-out"
        )
    return corpus


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m model_train.data", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_MANIFEST, help="manifest to write (default: %(default)s)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
    manifest = build_manifest()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_file(args.out, json.dumps(manifest, indent=1) + "\n", TrainError)
    n_held = sum(f["split"] == "heldout" for f in manifest["files"])
    log.info(
        "wrote %s: %d files (%d held out), %d near-duplicates dropped",
        args.out,
        len(manifest["files"]),
        n_held,
        len(manifest["near_duplicates"]),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
