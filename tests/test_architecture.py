"""The layering docs/architecture.md describes, checked on the source: no import cycles, no import of a
higher layer, no other module's private names."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "rleseg"

# docs/architecture.md's table: the top-level module or package -> its layer.
LAYERS = {
    "tokens": 0, "metrics": 0, "imageio": 0, "typed_yaml": 0, "atomic": 0, "progress": 0, "limits": 0, "device": 0,
    "models": 1, "data": 1, "stats": 1, "visualize": 1, "coco": 1, "label_files": 1, "llm": 1,
    "onnx_runtime": 1,
    "inference": 2,
    "engine": 3, "training_state": 3, "experiment": 3, "distributed": 3,
    "train": 4, "training_output": 4, "evaluate": 4, "report": 4,
    "predict": 4, "demo": 4, "config_reference": 4, "patch_stats": 4, "export": 4, "napari_plugin": 4,
    "export_text": 4,
    "init": 4, "onnx_export": 4,
    "cli": 5,
}


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[str, list[str]]]:
    """(imported rleseg module, names taken from it) for every import in the file, function-level ones too."""
    package = _module_name(path) if path.name == "__init__.py" else _module_name(path).rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names if alias.name.startswith("rleseg")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("rleseg"):
                found.append((module, [alias.name for alias in node.names]))
    return found


def _graph() -> dict[str, set[str]]:
    modules = {_module_name(p): p for p in SRC.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for module, names in _imports(path):
            targets = [f"{module}.{n}" for n in names if f"{module}.{n}" in modules] or [module]
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def _top(module: str) -> str:
    return module.split(".")[1] if "." in module else module


def test_no_import_cycles():
    graph, state, cycle = _graph(), {}, []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open" and not cycle:
                cycle.extend([*stack[stack.index(nxt):], nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycle, " -> ".join(cycle)


def test_no_module_imports_a_higher_layer():
    wrong = []
    for source, targets in _graph().items():
        if source == "rleseg":
            continue  # the package's lazy ``rleseg.load``
        for target in targets:
            if _top(target) != "rleseg" and LAYERS[_top(target)] > LAYERS[_top(source)]:
                wrong.append(f"{source} (layer {LAYERS[_top(source)]}) imports {target} (layer {LAYERS[_top(target)]})")
    assert not wrong, "\n".join(wrong)


def test_every_top_level_module_has_a_layer():
    tops = {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"} | {p.name for p in SRC.iterdir() if p.is_dir()
                                                                          and (p / "__init__.py").exists()}
    assert tops == set(LAYERS), f"update LAYERS and docs/architecture.md: {sorted(tops ^ set(LAYERS))}"


def test_no_module_takes_another_modules_private_names():
    taken = []
    for path in SRC.rglob("*.py"):
        for module, names in _imports(path):
            private = [n for n in names if n.startswith("_") and not n.startswith("__")]
            if private:
                taken.append(f"{_module_name(path)} takes {private} from {module}")
    assert not taken, "\n".join(taken)


@pytest.mark.parametrize("module", ["rleseg.tokens", "rleseg.stats", "rleseg.metrics", "rleseg.imageio", "rleseg.cli",
                                    "rleseg.onnx_runtime"])
def test_torch_free_layers_do_not_import_torch(module):
    code = f"import sys, {module}; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0, f"{module} imports torch"
