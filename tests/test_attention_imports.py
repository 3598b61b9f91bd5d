"""How the modules of attention/ import each other, read from their source: no circle (imports
inside functions included), triton imported only under attention/triton/, and nothing that
`import biggan_smyrf.attention` loads imports triton (it is optional)."""
import ast
from pathlib import Path

PACKAGE = "biggan_smyrf.attention"
ROOT = Path(__file__).resolve().parents[1] / "biggan_smyrf" / "attention"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join((PACKAGE, *parts[:-1])) if parts[-1] == "__init__" else ".".join((PACKAGE, *parts))


MODULES = {module_name(path): path for path in ROOT.rglob("*.py")}


def imports(name: str, module_level_only: bool = False) -> set[str]:
    """The modules `name` imports: attention/ modules by full name, others by their top package."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    nodes = tree.body if module_level_only else ast.walk(tree)
    found = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found |= {a.name if a.name.startswith(PACKAGE) else a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([package.rsplit(".", node.level - 1)[0]] + ([base] if base else []))
            if not base.startswith(PACKAGE):
                found.add(base.split(".")[0])
                continue
            # `from X import Y` imports submodule X.Y where there is one, else a name of X.
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names}
    return found


def test_no_import_circle():
    graph = {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}
    state = {}

    def visit(name, path):
        state[name] = "open"
        for target in graph[name]:
            assert state.get(target) != "open", "import circle: " + " -> ".join(path + [target])
            if target not in state:
                visit(target, path + [target])
        state[name] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])


def test_triton_is_imported_only_under_attention_triton():
    inside = {name for name in MODULES if name == f"{PACKAGE}.triton" or name.startswith(f"{PACKAGE}.triton.")}
    outside = [name for name in MODULES if name not in inside and "triton" in imports(name)]
    assert outside == []


def test_importing_the_package_does_not_import_triton():
    loaded, todo = set(), [PACKAGE]
    while todo:
        name = todo.pop()
        loaded.add(name)
        todo += [m for m in imports(name, module_level_only=True) if m in MODULES and m not in loaded]
    assert f"{PACKAGE}.cuda_route" not in loaded and f"{PACKAGE}.triton.blocks" not in loaded
    assert not any("triton" in imports(name, module_level_only=True) for name in loaded)
