"""The layout is the architecture: no import circles, the library never imports its clients, a study
never imports another study, and each stage's dvc.yaml deps cover every project module it imports
(else DVC would not re-run it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from conftest import REPO
from spikelab.params import read_yaml

PACKAGES = ("spikelab", "study", "studies", "stages", "benchmarks", "team", "tools")
# who may import whom: the library is the bottom layer; the study engines and shared analysis, the
# studies, the tools and the benchmarks are its clients; nothing imports a study
MAY_IMPORT = {
    "spikelab": {"spikelab"},
    "stages": {"spikelab"},
    "study": {"spikelab", "study"},
    # each study (studies/<name>/) runs on the engines and the shared analysis; test_no_study_imports_another
    "studies": {"spikelab", "study", "studies"},
    # the everyday tools (make exp, compare, ui, relocate, sync) use the engines' DVC calls and tables
    "tools": {"spikelab", "study", "tools"},
    # the study-throughput benchmark times the study's own queue-and-wait: the study is its workload
    "benchmarks": {"spikelab", "study", "benchmarks"},
    # team mode spreads the study over machines: it reuses the study's sweep and report
    "team": {"spikelab", "study", "team"},
}


def module_files() -> dict[str, Path]:
    """{'spikelab.params': path, 'stages.train': path, ...} for every project module."""
    found = {}
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules a file imports, anywhere in it (a function's lazy import counts too)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        found |= {name for name in names if name in modules}
    # importing a.b.c imports the packages a and a.b first
    found |= {".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 1)} & modules.keys()
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = module_files()
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def test_no_import_circles(graph):
    done, on_path = set(), []

    def visit(module):
        if module in on_path:
            raise AssertionError("import circle: " + " -> ".join(on_path[on_path.index(module) :] + [module]))
        if module in done:
            return
        on_path.append(module)
        for imported in sorted(graph[module]):
            visit(imported)
        on_path.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)


def test_no_layer_imports_one_above_it(graph):
    wrong = [
        f"{module} imports {imported}"
        for module, imported_set in graph.items()
        for imported in imported_set
        if imported.split(".")[0] not in MAY_IMPORT[module.split(".")[0]]
    ]
    assert wrong == []


def test_no_study_imports_another(graph):
    """A study folder is self-contained: it may read another study's committed result files (the
    replication reads the evidence study's tables), never import its code; shared code lives in study/."""

    def home(module: str) -> str:
        return ".".join(module.split(".")[:2])  # studies.<name>

    wrong = [
        f"{module} imports {imported}"
        for module, imported_set in graph.items()
        if module.startswith("studies.")
        for imported in imported_set
        if imported.startswith("studies.") and home(imported) != home(module)
    ]
    assert wrong == []


def test_the_results_folder_is_named_in_one_place():
    """Where a study's results go is study.sweep.results_of's rule (results/ beside the sweep file):
    a module naming a results folder itself (Path("study/results"), HOME / "results") writes where
    the study's report, its resume and its README do not look."""
    named = [
        (str(path.relative_to(REPO)), node.value)
        for path in module_files().values()
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and re.fullmatch(r"[\w./]*results", node.value)
    ]
    assert named == [("study/sweep.py", "results")]


def test_every_study_is_a_package_of_its_own():
    """`python -m studies.<name>.<module>` needs studies/ and each folder to be packages."""
    folders = [path for path in (REPO / "studies").iterdir() if path.is_dir() and path.name != "__pycache__"]
    assert folders and (REPO / "studies" / "__init__.py").is_file()
    assert [folder.name for folder in folders if not (folder / "__init__.py").is_file()] == []


def closure(module: str, graph: dict[str, set[str]]) -> set[str]:
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        if current not in seen:
            seen.add(current)
            todo += graph[current]
    return seen


def test_each_stage_depends_on_every_module_it_imports(graph):
    modules = module_files()
    for name, stage in read_yaml(REPO / "dvc.yaml", "dvc")["stages"].items():
        module = stage["cmd"].split()[2]  # python -m stages.<name> ...
        script = module.replace(".", "/") + ".py"
        deps = [Path(dep) for dep in stage["deps"]]
        assert Path(script) in deps, f"stage {name}: its script {script} is not a dep"
        for imported in closure(module, graph):
            path = modules[imported].relative_to(REPO)
            covered = any(path == dep or dep in path.parents for dep in deps)
            assert covered, f"stage {name} imports {imported} ({path}) but dvc.yaml's deps do not cover it"


# the library's public entry points for users outside the lab (pip install .): the spike doctor's
# callback and command. They count as stages here: what they import is the library's too
PUBLIC_API = ("spikelab.monitor", "spikelab.diagnose")


def test_the_library_holds_only_what_the_stages_import(graph):
    """spikelab/ is what the stages and the public API run: a tool living there would be a dep of
    every stage, and editing it would re-run the pipeline (and end a study's resume) for nothing."""
    stages = [name for name in graph if name.startswith("stages.")] + list(PUBLIC_API)
    reached = set().union(*(closure(stage, graph) for stage in stages))
    library = {name for name in graph if name.startswith("spikelab.")}
    assert library - reached == set(), "library modules no stage imports: move them to a client package"


def test_no_merge_conflict_markers_in_tracked_files():
    """A half-resolved merge must not land: the Makefile and README are not exercised by other tests."""
    import subprocess

    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    marked = []
    for name in tracked:
        path = REPO / name
        if path.suffix in (".png", ".gz", ".npz", ".keras") or not path.is_file():
            continue
        lines = path.read_text(errors="replace").splitlines()
        if any(line.startswith(("<<<<<<< ", ">>>>>>> ")) for line in lines):
            marked.append(name)
    assert marked == []
