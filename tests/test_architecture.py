"""The layers stay layers: the core imports nothing of ours, each layer imports only the ones below it, and no
module imports itself back through others (imports inside functions count too)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# Package -> the packages it may import (besides itself). eeg_core is the leaf; eeg_vlm is the top.
ALLOWED = {
    "eeg_core": set(),
    "sleep_eeg": {"eeg_core"},
    "vision_modules": {"eeg_core"},
    "llava": {"eeg_core"},
    "eeg_vlm": {"eeg_core", "sleep_eeg", "vision_modules", "llava"},
}

# sleep_eeg's sub-packages along the data flow -> the sub-packages each may import (besides itself and eeg_core).
# signal is the leaf; recording reads files; images, synthetic nights and baselines stand side by side on both;
# evaluation is the top (score --edf-dir puts YASA pretrained beside the answers).
SLEEP_EEG_LAYERS = {
    "signal": set(),
    "recording": {"signal"},
    "images": {"recording", "signal"},
    "synthetic": {"recording", "signal"},
    "baselines": {"recording", "signal"},
    "evaluation": {"baselines", "recording", "signal"},
}

# LLaVA's entry-point scripts -> the modules allowed to import them. A script is run, never imported: what a script
# and another module share lives in a library module (llava.eval.answering for model_vqa.py). train_mem.py is
# LLaVA's entry to train.py's train().
SCRIPTS = {
    "llava.eval.model_vqa": set(),
    "llava.eval.merge_answers": set(),
    "llava.train.train_mem": set(),
    "llava.train.train": {"llava.train.train_mem"},
}


def project_modules() -> dict[str, Path]:
    modules = {}
    for package in ALLOWED:
        for path in (REPO / package).rglob("*.py"):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            modules[name.removesuffix(".__init__")] = path
    return modules


def imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """Project modules that ``module`` imports anywhere in its file (a package import counts as its
    ``__init__``; ``from package import name`` counts the submodule ``name`` when there is one)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                parts = parts[: len(parts) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules and "." in name:
                name = name.rsplit(".", 1)[0]
            if name in modules and name != module:
                found.add(name)
    return found


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: imported(name, path, modules) for name, path in modules.items()}


def test_each_layer_imports_only_the_layers_below_it():
    wrong = [f"{m} imports {i}" for m, targets in import_graph().items() for i in sorted(targets)
             if i.split(".")[0] != m.split(".")[0] and i.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_sleep_eeg_sub_packages_import_only_the_ones_below_them():
    graph = {m: t for m, t in import_graph().items() if m.startswith("sleep_eeg.")}
    assert {m.split(".")[1] for m in graph} == set(SLEEP_EEG_LAYERS)  # every sub-package is placed, no module loose
    def allowed(module: str, target: str) -> bool:
        if not target.startswith("sleep_eeg"):
            return True
        if target == "sleep_eeg":
            return False
        here, there = module.split(".")[1], target.split(".")[1]
        return there == here or there in SLEEP_EEG_LAYERS[here]

    wrong = [f"{m} imports {i}" for m, targets in graph.items() for i in sorted(targets) if not allowed(m, i)]
    assert not wrong, "imports against sleep_eeg's sub-layers:\n" + "\n".join(wrong)


def test_the_core_imports_nothing_of_the_rest_of_the_project():
    core = {m: t for m, t in import_graph().items() if m.startswith("eeg_core")}
    assert core  # the core exists and is scanned
    assert all(i.startswith("eeg_core") for targets in core.values() for i in targets)


def test_no_module_imports_a_script():
    graph = import_graph()
    assert set(SCRIPTS) <= set(graph)  # the scripts exist and are scanned
    wrong = [f"{m} imports the script {s}" for m, targets in graph.items() for s in sorted(targets & set(SCRIPTS))
             if m not in SCRIPTS[s]]
    assert not wrong, "modules importing an entry-point script:\n" + "\n".join(wrong)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [node, nxt]))
            elif nxt not in state:
                visit(nxt, stack + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_wrong_import(tmp_path):
    """The scan reads imports inside functions and relative imports: a core module importing upwards is found."""
    modules = {"eeg_core.formats": tmp_path / "formats.py", "llava.constants": tmp_path / "c.py",
               "eeg_core": tmp_path / "__init__.py"}
    src = tmp_path / "formats.py"
    src.write_text("def f():\n    from llava.constants import IGNORE_INDEX\nfrom . import formats\n")
    assert imported("eeg_core.formats", src, modules) == {"llava.constants", "eeg_core"}
