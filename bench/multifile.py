"""Does context from other files help? Exact match on a held-out multi-file task set, with and without it.

In: models (``demo``, ``micro`` or GGUF paths). Out: a Markdown table on stdout (JSON with ``--json``).

Tasks come from the standard library of the running interpreter: every module of a package that the
training data manifest (``model_train/data/stdlib-3.11.json``) holds out from training, at each place
where it uses a name that a *sibling* module of the same package defines at its top level and that the
module itself has not mentioned before that place (``process.current_process()`` in
``multiprocessing/util.py``, ``logging.Handler`` in ``logging/handlers.py``). The cursor sits just before
the name; the reference is the rest of the line. Without context from the siblings the model can only
guess the name; with it, the siblings are open documents and ``neighbors.Neighbors`` picks chunks of them
for the prompt exactly as the server does.

Scores per model and mode: ``name``: the completion starts with the name (followed by a non-identifier
character), ``line``: the completion's first line equals the rest of the line, ``similarity``: the mean
edit similarity (difflib ratio) of the first line to the rest of the line, and, with extra context,
``retrieved``: the share of tasks whose chosen chunks contain the name at all (the ranking's recall,
whatever the model makes of it).

Run: ``python bench/multifile.py --models demo,micro``.
"""

from __future__ import annotations

import argparse
import ast
import io
import json
import re
import sys
import sysconfig
import tokenize
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

MANIFEST = REPO / "model_train" / "data" / "stdlib-3.11.json"
MIN_NAME = 5  # shorter names are guessable without any context


@dataclass(frozen=True)
class Task:
    path: str  # the module, relative to the standard library
    text: str
    offset: int  # the cursor: just before the name
    name: str
    rest: str  # the reference: the rest of the line from the cursor
    siblings: tuple[tuple[str, str], ...]  # (relative path, text) of the package's other modules


def _top_level_names(source: str) -> set[str]:
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return set()
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in node.targets if isinstance(node, ast.Assign) else [node.target]:
                if isinstance(t, ast.Name):
                    names.add(t.id)
    return {n for n in names if len(n) >= MIN_NAME and not (n.startswith("__") and n.endswith("__"))}


def build_tasks(stdlib: Path, per_file: int = 12) -> list[Task]:
    """The task set (deterministic for a given standard library; see the module docstring)."""
    manifest = json.loads(MANIFEST.read_text())
    held = [f["path"] for f in manifest["files"] if f["split"] == "heldout" and "/" in f["path"]]
    tasks: list[Task] = []
    for rel in sorted(held):
        path = stdlib / rel
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        siblings = tuple(
            (p.relative_to(stdlib).as_posix(), p.read_text(encoding="utf-8"))
            for p in sorted(path.parent.glob("*.py"))
            if p != path
        )
        defined = set().union(*(_top_level_names(t) for _, t in siblings)) - _top_level_names(text) if siblings else set()
        if not defined:
            continue
        found = 0
        seen: set[str] = set()
        starts = [0] + [i + 1 for i, ch in enumerate(text) if ch == "\n"]
        try:  # names in code only (not in strings or comments): the tokenizer knows which is which
            toks = list(tokenize.generate_tokens(io.StringIO(text).readline))
        except (tokenize.TokenError, SyntaxError):
            continue
        for tok in toks:
            name = tok.string
            if tok.type != tokenize.NAME or name not in defined or name in seen:
                continue
            seen.add(name)
            line_start = starts[tok.start[0] - 1]
            offset = line_start + tok.start[1]
            line = tok.line.split("\n", 1)[0]
            after = line[tok.end[1] :].lstrip()
            if line.lstrip().startswith(("import ", "from ", "def ", "class ")) or (after[:1] == "=" and after[:2] != "=="):
                continue
            # the name must be new at this point: not in any earlier line (imports included)
            if re.search(r"\b" + re.escape(name) + r"\b", text[:line_start]):
                continue
            tasks.append(Task(rel, text, offset, name, line[tok.start[1] :].rstrip(), siblings))
            found += 1
            if found >= per_file:
                break
    return tasks


def score(completion: str, task: Task) -> tuple[bool, bool, float]:
    import difflib

    first = completion.split("\n", 1)[0].rstrip()
    name_ok = first.startswith(task.name) and not re.match(r"\w", first[len(task.name) : len(task.name) + 1])
    return name_ok, first == task.rest, difflib.SequenceMatcher(None, first, task.rest).ratio()


def run(spec: str, tasks: list[Task], args: argparse.Namespace) -> list[dict]:
    import asyncio

    from bench.latency import model_path
    from lsp_server import neighbors, pipeline
    from lsp_server.cache import TypeThroughCache
    from lsp_server.config import Settings
    from lsp_server.engines.llama_cpp import EngineOptions, LlamaCppEngine

    name, path = model_path(spec)
    engine = LlamaCppEngine(path, name, EngineOptions(n_ctx=args.context + args.extra + args.max_tokens + 64))
    rows = []
    try:
        for extra in (0, args.extra):
            settings = Settings(
                context_tokens=args.context, extra_context_tokens=extra, max_tokens=args.max_tokens, time_budget_ms=600_000
            )
            hits_name = hits_line = retrieved = 0
            similarity = 0.0
            for t in tasks:
                others = [neighbors.Doc(f"file:///{p}", p, "python", s) for p, s in t.siblings]
                doc = neighbors.Doc(f"file:///{t.path}", t.path, "python", t.text)
                nb = neighbors.Neighbors()
                out = asyncio.run(
                    pipeline.complete(
                        engine,
                        TypeThroughCache(),
                        doc.uri,
                        t.text,
                        t.offset,
                        settings,
                        extra=pipeline.Extra(nb, doc, tuple(others)) if extra else None,
                    )
                )
                n_ok, l_ok, sim = score(out.texts[0] if out.texts else "", t)
                hits_name += n_ok
                hits_line += l_ok
                similarity += sim
                retrieved += bool(out.context and re.search(r"\b" + re.escape(t.name) + r"\b", out.context.extra))
            rows.append(
                {"model": name, "extra_tokens": extra, "tasks": len(tasks),
                 "name_exact": hits_name / max(1, len(tasks)), "line_exact": hits_line / max(1, len(tasks)),
                 "similarity": similarity / max(1, len(tasks)), "retrieved": retrieved / max(1, len(tasks))}
            )  # fmt: skip
            print(f"{name} extra={extra}: name {hits_name}/{len(tasks)}, line {hits_line}/{len(tasks)}", file=sys.stderr)
    finally:
        engine.close()
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="demo,micro")
    p.add_argument("--context", type=int, default=768, help="prefix + suffix budget in tokens")
    p.add_argument("--extra", type=int, default=512, help="budget of the other files' chunks in tokens")
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--per-file", type=int, default=12, help="at most this many tasks per module")
    p.add_argument("--list", action="store_true", help="print the tasks and exit")
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    tasks = build_tasks(Path(sysconfig.get_paths()["stdlib"]), args.per_file)
    if args.list:
        for t in tasks:
            print(f"{t.path}: {t.rest!r}")
        print(f"{len(tasks)} tasks from {len({t.path for t in tasks})} modules", file=sys.stderr)
        return
    rows = [r for spec in args.models.split(",") if spec for r in run(spec, tasks, args)]
    print("| model | extra context (tokens) | tasks | name exact | line exact | edit similarity | name in the chunks |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['model']} | {r['extra_tokens']} | {r['tasks']} | {100 * r['name_exact']:.1f}% | {100 * r['line_exact']:.1f}% | "
            f"{r['similarity']:.3f} | {100 * r['retrieved']:.0f}% |"
        )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
