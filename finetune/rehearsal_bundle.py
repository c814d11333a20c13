"""Build the small rehearsal set bundled in finetune/data/ (`python -m finetune.rehearsal_bundle`).

Both halves come from the Python standard library installed on the build machine (PSF license, which
permits redistribution): plain code is whole stdlib modules, natural language is the longer prose
docstrings of stdlib modules, classes and functions. It is a stand-in for the paper's pretraining
rehearsal data (6% code, 2% natural language) that fits in a package: point `data.rehearsal` at real
corpora for a real run.
"""

from __future__ import annotations

import ast
import json
import sysconfig
from pathlib import Path

from finetune.rehearsal import BUNDLED_FILES

CODE_MODULES = ("bisect.py", "heapq.py", "textwrap.py", "fractions.py", "shlex.py", "graphlib.py",
                "colorsys.py", "fnmatch.py", "glob.py", "statistics.py", "keyword.py", "string.py",
                "difflib.py", "queue.py", "sched.py", "reprlib.py")
DOC_MODULES = ("collections/__init__.py", "functools.py", "itertools.py", "json/__init__.py", "pathlib.py",
               "argparse.py", "dataclasses.py", "contextlib.py", "typing.py", "enum.py", "logging/__init__.py",
               "subprocess.py", "threading.py", "random.py", "datetime.py", "decimal.py", "inspect.py")
CODE_BUDGET, TEXT_BUDGET = 140_000, 50_000
MIN_DOCSTRING = 300


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def code_rows(budget: int = CODE_BUDGET) -> list[dict[str, str]]:
    rows, used = [], 0
    for name in CODE_MODULES:
        path = _stdlib() / name
        if not path.is_file():
            continue
        text = path.read_text(encoding="utf-8")
        if used + len(text) > budget:
            continue
        rows.append({"source": f"cpython Lib/{name}", "text": text})
        used += len(text)
    return rows


def text_rows(budget: int = TEXT_BUDGET) -> list[dict[str, str]]:
    rows, used = [], 0
    for name in DOC_MODULES:
        path = _stdlib() / name
        if not path.is_file():
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nodes = [tree] + [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)]
        for node in nodes:
            doc = ast.get_docstring(node)
            if not doc or len(doc) < MIN_DOCSTRING or doc.count(">>>") > 0:
                continue  # prose only: short docstrings and doctests are not natural language
            if used + len(doc) > budget:
                return rows
            rows.append({"source": f"cpython Lib/{name}:{getattr(node, 'name', '<module>')}", "text": doc})
            used += len(doc)
    return rows


def write_bundle() -> dict[str, int]:
    sizes = {}
    for kind, rows in (("code", code_rows()), ("text", text_rows())):
        path = BUNDLED_FILES[kind]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        sizes[path.name] = path.stat().st_size
    return sizes


if __name__ == "__main__":
    print(json.dumps(write_bundle()))
