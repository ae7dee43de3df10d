"""The layers stay layers: the core imports nothing of ours, each layer imports only the ones below it, and no
module imports itself back through others (imports inside functions count too). No function grows past 60 lines
or 8 parameters but the few listed with their reasons."""
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


# Every function of the packages, benchmarks/ and scripts/ stays within 60 lines (from the first statement after
# its docstring to its last line) and 8 parameters (self / cls not counted; *args and **kwargs count one each).
# The exceptions, by qualified name, each with its reason; one that is gone or back within the limits fails too,
# so the list cannot outlive its reasons.
MAX_LINES, MAX_PARAMS = 60, 8
LIMITED = [*ALLOWED, "benchmarks", "scripts"]
LIMIT_EXCEPTIONS = {
    "llava.model.builder.load_pretrained_model": "LLaVA's public signature (9 parameters)",
    "llava.model.llava_llama.LlavaLlamaForCausalLM.forward": "Hugging Face's forward signature",
}


def function_sizes(module: str, path: Path) -> dict[str, tuple[int, int]]:
    """``qualified name -> (body lines, parameters)`` of every function in ``path`` (methods and nested functions
    included, named through their class or function)."""
    sizes = {}

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}.{child.name}")
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                name = f"{prefix}.{child.name}"
                body = child.body
                if isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                        and isinstance(body[0].value.value, str):
                    body = body[1:]  # the docstring
                lines = child.end_lineno - body[0].lineno + 1 if body else 0
                a = child.args
                positional = a.posonlyargs + a.args
                params = len(positional) + len(a.kwonlyargs) + (a.vararg is not None) + (a.kwarg is not None)
                params -= bool(positional) and positional[0].arg in ("self", "cls")
                old = sizes.get(name, (0, 0))  # a name defined twice (under if / else): the larger of each
                sizes[name] = (max(lines, old[0]), max(params, old[1]))
                visit(child, name)
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8")), module)
    return sizes


def all_function_sizes() -> dict[str, tuple[int, int]]:
    sizes = {}
    for folder in LIMITED:
        for path in sorted((REPO / folder).rglob("*.py")):
            module = ".".join(path.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
            sizes.update(function_sizes(module, path))
    return sizes


def over_limits(sizes: dict[str, tuple[int, int]]) -> dict[str, str]:
    return {name: f"{lines} lines, {params} parameters" for name, (lines, params) in sizes.items()
            if lines > MAX_LINES or params > MAX_PARAMS}


def test_no_function_over_the_size_limits():
    sizes = all_function_sizes()
    assert any(name.startswith("sleep_eeg.") for name in sizes)  # the packages are found and scanned
    wrong = [f"{name}: {why}" for name, why in over_limits(sizes).items() if name not in LIMIT_EXCEPTIONS]
    assert not wrong, (f"over {MAX_LINES} lines or {MAX_PARAMS} parameters (split it into named steps, or gather "
                       "the parameters in a config):\n" + "\n".join(wrong))


def test_each_limit_exception_still_exceeds():
    sizes = all_function_sizes()
    over = over_limits(sizes)
    stale = [f"{name}: {'no such function' if name not in sizes else 'within the limits now'}"
             for name in LIMIT_EXCEPTIONS if name not in over]
    assert not stale, "LIMIT_EXCEPTIONS entries to remove:\n" + "\n".join(stale)


def test_the_checker_sees_a_long_function_and_too_many_parameters(tmp_path):
    """A docstring does not count; a method's self does not; *args and **kwargs count one each; a nested function
    is named through its outer one."""
    docstring = '    """Summary.\n\n    Parameters\n    ----------\n' + "    x : int\n" * 70 + '    """\n'
    src = tmp_path / "m.py"
    src.write_text(
        "def long():\n" + docstring + "    x = 0\n" * 61
        + "def at_the_limit():\n" + docstring + "    x = 0\n" * 60
        + "def many(a, b, c, d, e, f, g, h, i):\n    pass\n"
        + "def starred(a, b, c, d, e, f, g, *args, **kwargs):\n    pass\n"
        + "class C:\n    def method(self, a, b, c, d, e, f, g, h):\n        pass\n"
        + "def outer():\n    def inner(a, b, c, d, e, f, g, h, *, i):\n        pass\n"
    )
    assert over_limits(function_sizes("m", src)) == {
        "m.long": "61 lines, 0 parameters", "m.many": "1 lines, 9 parameters", "m.starred": "1 lines, 9 parameters",
        "m.outer.inner": "1 lines, 9 parameters"}
