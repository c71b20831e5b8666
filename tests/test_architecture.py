"""The layering rules of docs/design.md ("Layers"), checked on the source: the import graph of
the project's packages has no cycle, the core imports neither training nor the service, the
service and training do not import each other, and nothing outside the registry branches on a
bundle kind. Imports inside functions count too: a cycle hidden in a function is still a cycle.
So do imports under `if TYPE_CHECKING:`: a type-only cycle is still two modules that need
each other.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from genrec.registry import METHODS, kinds
from training.methods import TRAINERS

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("genrec", "training", "service")
FORBIDDEN = {"genrec": ("training", "service"), "training": ("service",), "service": ("training",)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """Project modules that `name` imports anywhere in its file (resolving relative imports)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = project_modules()
    known = set(modules)
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle(graph):
    assert find_cycle(graph) is None, " -> ".join(find_cycle(graph) or [])


def test_the_cycle_finder_finds_one():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_imports_point_one_way(graph):
    wrong = sorted(
        f"{source} imports {target}"
        for source, targets in graph.items()
        for target in targets
        if target.split(".")[0] in FORBIDDEN[source.split(".")[0]]
    )
    assert not wrong, "\n".join(wrong)


def test_the_graph_sees_relative_and_function_level_imports(graph):
    assert "genrec.registry" in graph["genrec.config"]  # `from .registry import ...`
    assert "training.pipeline" in graph["training.cli"]  # imported inside main()
    assert "genrec.method" not in graph["genrec.registry"]  # the registry names classes by path


def test_every_method_has_a_trainer_and_lives_in_its_folder():
    assert set(TRAINERS) == set(kinds())
    for kind, target in METHODS.items():
        assert target.startswith(f"genrec.{kind}."), target
        assert TRAINERS[kind].startswith(f"training.methods.{kind}:"), TRAINERS[kind]


def branches_on_a_kind(path: Path) -> list[str]:
    """`x == "idgenrec"`, `kind in ("cllm4rec", ...)` and the like, anywhere in a file."""
    names = set(kinds())
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if not isinstance(node, ast.Compare):
            continue
        for side in [node.left, *node.comparators]:
            values = side.elts if isinstance(side, ast.Tuple | ast.List | ast.Set) else [side]
            if any(isinstance(v, ast.Constant) and v.value in names for v in values):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_nothing_branches_on_the_bundle_kind():
    """The registry is the one dispatch; a method's own folder may name its kind."""
    offenders = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            offenders += branches_on_a_kind(path)
    assert not offenders, offenders


def test_the_branch_finder_finds_one(tmp_path):
    sample = ROOT / "tests" / "_kind_branch_sample.py"
    sample.write_text('if bundle.kind == "cllm4rec":\n    pass\nok = kind in ("idgenrec", "x")\n')
    try:
        assert len(branches_on_a_kind(sample)) == 2
    finally:
        sample.unlink()
