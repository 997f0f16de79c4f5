"""The package's shape: stages a reader can see, no import cycle, short modules, one home per hyper-parameter."""
import ast
import dataclasses
from pathlib import Path

import adaq_lora
from adaq_lora.config import AdaQConfig, TrainConfig
from adaq_lora.profiles import Profile
from adaq_lora.tuners import method_names, method_spec

PACKAGE = Path(adaq_lora.__file__).parent
STAGES = ("quant", "adapters", "tuners", "training", "scoring", "measure", "grid")
MAX_LINES = 300


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, modules: set[str]) -> set[str]:
    """The package's modules that `path` imports anywhere (inside functions too), relative imports resolved."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else [])) if node.level else node.module or ""
            found |= {candidate for candidate in (target, *(f"{target}.{alias.name}" for alias in node.names))
                      if candidate in modules}
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name in modules}
    # a package's face importing its own stage's modules is how it shows them, not a dependency back
    return {module for module in found if module != name and not module.startswith(name + ".")}


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    return {name: imported_modules(path, set(paths)) for name, path in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph[node]:
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
                on_stack.discard(component[-1])
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_the_package_imports_without_a_cycle_even_inside_functions():
    graph = import_graph()
    assert len(graph) > 30
    assert cycles(graph) == []


def test_a_cycle_is_found_when_there_is_one():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_pipeline_stages_are_subpackages_with_a_face():
    for stage in STAGES:
        face = PACKAGE / stage / "__init__.py"
        assert face.exists(), stage
        assert ast.get_docstring(ast.parse(face.read_text(encoding="utf-8"))), f"{stage}/__init__.py says nothing"


def test_every_module_reads_in_one_sitting():
    long = {str(path.relative_to(PACKAGE)): n for path in PACKAGE.rglob("*.py")
            if (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert long == {}


def test_no_hyper_parameter_is_declared_in_two_configurations():
    fields = {cls.__name__: {field.name for field in dataclasses.fields(cls)} for cls in (AdaQConfig, TrainConfig, Profile)}
    names = list(fields)
    shared = {(a, b): fields[a] & fields[b] for i, a in enumerate(names) for b in names[i + 1:] if fields[a] & fields[b]}
    assert shared == {}


def test_every_method_has_one_spec_and_ours_come_before_the_peers():
    names = method_names()
    assert names[:7] == ("base", "full", "lora", "qlora", "adalora", "adaq_lora", "adaq_lora_nf4")
    assert [name for name in names if method_spec(name).peer] == ["peft-lora", "peft-qlora", "peft-adalora"]
    assert {name for name in names if method_spec(name).quantized} == {"qlora", "adaq_lora", "adaq_lora_nf4",
                                                                        "peft-qlora", "peft-adalora"}
    assert [name for name in names if method_spec(name).precision_plan] == ["adaq_lora"]
    assert [name for name in names if not method_spec(name).trains] == ["base"]
