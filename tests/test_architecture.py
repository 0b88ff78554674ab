"""The package's import structure, read with `ast`: no import cycle (imports inside functions count), no use of
another module's private names, and internal imports at the top of modules."""

import ast
from pathlib import Path


PACKAGE = Path(__file__).resolve().parent.parent / "peft_dect"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(module: str, node: ast.ImportFrom) -> str:
    """The absolute name of the module a `from ... import` statement reads from."""
    if not node.level:
        return node.module or ""
    package = module if MODULES[module].name == "__init__.py" else module.rpartition(".")[0]
    for _ in range(node.level - 1):
        package = package.rpartition(".")[0]
    return f"{package}.{node.module}" if node.module else package


def internal_imports(module: str):
    """(imported peft_dect module, imported names, ast node, whether inside a function) of every import."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    in_function = set()
    for fn in ast.walk(tree):
        if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            in_function |= {id(n) for n in ast.walk(fn)}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = resolve(module, node)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                name = target if target in MODULES else source
                if name in MODULES:
                    yield name, alias.name, node, id(node) in in_function
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    yield alias.name, None, node, id(node) in in_function


def graph() -> dict[str, set[str]]:
    return {m: {target for target, *_ in internal_imports(m) if target != m} for m in MODULES}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_the_package_modules():
    cycle = find_cycle(graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_imports_another_modules_private_names():
    offences = [
        f"{module} imports {name} from {target}"
        for module in MODULES
        for target, name, _, _ in internal_imports(module)
        if name and name.startswith("_") and not name.startswith("__")
    ]
    assert not offences, offences


def test_internal_imports_sit_at_the_top_of_modules_but_a_few_with_their_reason():
    deferred = {(m, node.lineno) for m in MODULES for _, _, node, inner in internal_imports(m) if inner}
    assert len(deferred) <= 3, sorted(deferred)
    for module, line in deferred:
        source = MODULES[module].read_text(encoding="utf-8").splitlines()[line - 1]
        assert "#" in source, f"{module}:{line} imports inside a function without a comment saying why"
