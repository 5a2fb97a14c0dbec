"""Real data that ships with the environment: English prose from the standard library's docstrings.

The sentences are extracted by parsing the standard library's source files with :mod:`ast`
(no module is imported or executed), so the corpus depends only on the Python version.
"""

from __future__ import annotations

import ast
import random
import re
import sysconfig
from pathlib import Path

__all__ = ["stdlib_sentences"]

_SPLIT = re.compile(r"(?<=[.!?])\s+(?=[A-Z])")
_WORD = re.compile(r"[A-Za-z]{2,}")


def _docstrings(path: Path):
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            doc = ast.get_docstring(node, clean=True)
            if doc:
                yield doc


def stdlib_sentences(n: int | None = None, *, seed: int = 0, min_words: int = 6, max_chars: int = 300) -> list[str]:
    """English sentences from the standard library's docstrings, deduplicated, shuffled by ``seed``.

    Parameters
    ----------
    n : int, optional
        How many (all of them when omitted).
    seed : int
        Shuffle seed (the corpus is sorted first, so a seed gives the same list every time).
    min_words, max_chars : int
        Keep sentences with at least ``min_words`` words and at most ``max_chars`` characters,
        ending in a full stop, without code-like characters.
    """
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        parts = set(path.relative_to(root).parts)
        if parts & {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo"}:
            continue
        for doc in _docstrings(path):
            for para in doc.split("\n\n"):
                text = " ".join(para.split())
                for sent in _SPLIT.split(text):
                    if (len(sent) <= max_chars and sent.endswith(".") and sent[0].isupper()
                            and len(_WORD.findall(sent)) >= min_words
                            and not any(ch in sent for ch in "{}[]=<>|`\\$#@")):
                        seen.add(sent)
    out = sorted(seen)
    random.Random(seed).shuffle(out)
    return out if n is None else out[:n]
