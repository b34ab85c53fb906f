"""Check that Python files run on Python 3.9 (Slicer 5.8), beyond what vermin finds.

Run with the Python 3.9 interpreter of the compatibility environment::

    python .ci/check_py39.py ImplantBoneContact

* every file compiles with *this* interpreter (3.9: no ``match``, no parenthesised
  context managers, no ``except*``); vermin only prints a syntax error and exits 0;
* no ``X | Y`` of types is evaluated at run time: in ``isinstance``/``issubclass``,
  type aliases, defaults, or annotations of a file without
  ``from __future__ import annotations`` (vermin's union-types check cannot tell
  postponed annotations from evaluated ones). Operands that look like types: ``None``,
  builtin type names, CamelCase names (not ALL_CAPS flags), subscripted names (``list[int]``),
  dotted names ending in a CamelCase name.

Exit code 0 when every file passes, 1 otherwise (one line per finding).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

BUILTIN_TYPES = {"int", "float", "complex", "str", "bytes", "bool", "list", "dict", "tuple", "set", "frozenset", "type", "object"}


def _class_like(name: str) -> bool:
    """``Path``, ``StemFrame``: capitalised but not an ALL_CAPS constant (``os.W_OK | os.X_OK`` are flags)."""
    return name[:1].isupper() and not name.isupper()


def _looks_like_type(node: ast.AST) -> bool:
    if isinstance(node, ast.Constant):
        return node.value is None
    if isinstance(node, ast.Name):
        return node.id in BUILTIN_TYPES or _class_like(node.id)
    if isinstance(node, ast.Attribute):
        return _class_like(node.attr)
    if isinstance(node, ast.Subscript):
        return _looks_like_type(node.value)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _looks_like_type(node.left) or _looks_like_type(node.right)
    return False


def _annotation_nodes(tree: ast.AST) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            annotations.append(node.returns)
        if isinstance(node, ast.arg):
            annotations.append(node.annotation)
        if isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for ann in annotations:
            if ann is not None:
                ids.update(id(n) for n in ast.walk(ann))
    return ids


def runtime_unions(tree: ast.Module) -> list[int]:
    """Line numbers of ``X | Y`` type unions that Python 3.9 would evaluate."""
    postponed = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    skip = _annotation_nodes(tree) if postponed else set()
    lines = []
    for node in ast.walk(tree):
        if id(node) in skip or not (isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr)):
            continue
        if _looks_like_type(node.left) and _looks_like_type(node.right):
            lines.append(node.lineno)
    return sorted(set(lines))


def check(paths: list[Path]) -> list[str]:
    problems = []
    for path in paths:
        text = path.read_text(encoding="utf-8")
        try:
            tree = compile(text, str(path), "exec", ast.PyCF_ONLY_AST)
        except SyntaxError as exc:
            problems.append(f"{path}:{exc.lineno}: does not compile on Python {sys.version.split()[0]}: {exc.msg}")
            continue
        problems += [f"{path}:{line}: 'X | Y' type union evaluated at run time (Python 3.10+)" for line in runtime_unions(tree)]
    return problems


def main(argv: list[str]) -> int:
    files: list[Path] = []
    for arg in argv or ["ImplantBoneContact"]:
        p = Path(arg)
        files += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    problems = check(files)
    for line in problems:
        print(line)
    print(f"{len(files)} files checked on Python {sys.version.split()[0]}: {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
