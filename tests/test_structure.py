"""The shape the code keeps: every metric defined once and documented, config free of the web stack, no import
cycle, and small functions (radon's measures), so adding a metric or changing the counting rule touches one place."""

from __future__ import annotations

import ast
import itertools
import re
import subprocess
import sys
from pathlib import Path

from radon.complexity import cc_visit

from exporter import metrics

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "exporter"
MAX_LINES = 60
MAX_COMPLEXITY = 15


def expand(pattern: str) -> list[str]:
    """``aep_flow_{input,output}_bytes`` -> both names."""
    parts = re.split(r"\{([^}]*)\}", pattern)
    choices = [[p] if i % 2 == 0 else p.split(",") for i, p in enumerate(parts)]
    return ["".join(c) for c in itertools.product(*choices)]


def readme_reference() -> dict[str, tuple[str, set[str], str]]:
    """Every metric row of README's reference: exposed name -> (type, extra labels, profile or "")."""
    rows: dict[str, tuple[str, set[str], str]] = {}
    text = (ROOT / "README.md").read_text()
    reference = text[text.index("## Metric reference") :]
    for line in reference.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) < 3 or not cells[0].startswith("`aep_"):
            continue
        labels = {x.strip() for x in cells[2].strip("`").split(",") if x.strip()}
        profile = cells[3] if len(cells) == 5 else ""
        for name in re.findall(r"`(aep_[^`]+)`", cells[0]):
            for full in expand(name):
                rows[full] = (cells[1].split(",")[0].split(" ")[0], labels, profile)
    return rows


def exposed(family: metrics.Family) -> str:
    return f"{family.name}_total" if family.type == "counter" else family.name


def test_readme_metric_reference_matches_the_definitions() -> None:
    """Every family defined in metrics.py is in README's reference with its type, labels and profile (lean, full or
    opt-in), and nothing else is."""
    reference = readme_reference()
    defined = {exposed(f): f for f in (*metrics.FAMILIES, *metrics.SELF_FAMILIES)}
    assert set(reference) == set(defined), set(reference) ^ set(defined)
    opt_in = {"aep_flow_audience_records"}  # served only when metrics.audiences is on
    for name, family in defined.items():
        typ, labels, profile = reference[name]
        assert typ == family.type, (name, typ, family.type)
        assert profile or family not in metrics.FAMILIES or name == "aep_exporter_flow_up", name
        if profile:
            wanted = "opt-in" if family.name in opt_in else "lean" if family.lean else "full"
            assert profile == wanted, (name, profile, wanted)
        implicit = {"sandbox", "flow_id"} if family in metrics.FAMILIES else set()
        assert labels - implicit == set(family.labels), (name, labels, family.labels)


def test_static_labels_cannot_take_a_label_the_exporter_sets() -> None:
    """Every label a flow family carries is reserved: a configured static label can never collide with it."""
    from exporter.config import RESERVED_LABELS

    carried = {label for family in metrics.FAMILIES for label in family.labels}
    assert carried - RESERVED_LABELS == set()


def test_metric_names_are_written_in_one_module_only() -> None:
    """Only metrics.py spells a metric name; everything else takes it from there (rules.py writes PromQL for
    Prometheus, and slorules.py, whose names test_alerting checks against metrics.py)."""
    spelled = {
        path.relative_to(ROOT).as_posix()
        for path in PACKAGE.rglob("*.py")
        if re.search(r"""["'(]aep_(flow|exporter)_""", path.read_text())
    }
    assert spelled == {"exporter/metrics.py", "exporter/rules.py", "exporter/slorules.py"}


def test_importing_the_config_loads_neither_aiohttp_nor_bcrypt() -> None:
    """check-config needs no web stack: exporter.config imports neither aiohttp nor bcrypt."""
    code = "import sys, exporter.config; print(sorted({'aiohttp', 'bcrypt'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("exporter"):
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("exporter"))
    return names


def test_the_package_has_no_import_cycle() -> None:
    """Dependencies flow one way: the module import graph of the package is acyclic."""
    modules = {
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")
    }
    graph = {name: {m for m in imports_of(path) if m in modules and m != name} for name, path in modules.items()}
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for nxt in graph[node]:
            assert state.get(nxt) != 1, "import cycle: " + " -> ".join([*trail, node, nxt])
            if nxt not in state:
                visit(nxt, [*trail, node])
        state[node] = 2

    for name in graph:
        if name not in state:
            visit(name, [])


def test_no_function_is_long_or_complex_outside_the_simulator() -> None:
    """In exporter/ (the simulator aside) no function is over 60 lines or of cyclomatic complexity over 15."""
    offenders: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if "simulator" in path.parts:
            continue
        for block in cc_visit(path.read_text()):
            for item in [block, *getattr(block, "methods", [])]:
                if type(item).__name__ == "Class":
                    continue
                length = item.endline - item.lineno + 1
                if length > MAX_LINES or item.complexity > MAX_COMPLEXITY:
                    offenders.add(f"{path.name}:{item.name} {length} lines, complexity {item.complexity}")
    assert not offenders, sorted(offenders)


def test_readme_drawing_names_every_module() -> None:
    """README's "How it works" drawing shows every module of the package."""
    text = (ROOT / "README.md").read_text()
    drawing = text[text.index("## How it works") : text.index("- **Polling is in the background")]
    modules = {p.name for p in PACKAGE.glob("*.py")} - {"__init__.py", "__main__.py"}
    assert {m for m in modules if m not in drawing} == set()
    assert "simulator/" in drawing


MAX_MODULE_LINES = 500


def test_no_product_module_is_over_500_lines_outside_the_simulator() -> None:
    """A room that outgrows 500 lines holds more than one concept: give the new one its own module."""
    sizes = {
        path.relative_to(ROOT).as_posix(): len(path.read_text().splitlines())
        for path in PACKAGE.rglob("*.py")
        if "simulator" not in path.parts
    }
    assert {name: n for name, n in sizes.items() if n > MAX_MODULE_LINES} == {}
    assert len(sizes) > 30  # the walk found the package


def loaded_by(*argv: str) -> list[str]:
    """The simulator and demo modules loaded by parsing ``aep-flow-exporter <argv> --help``."""
    code = (
        "import contextlib, io, sys\n"
        "from exporter.cli import main\n"
        "with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()):\n"
        f"    main({[*argv, '--help']!r})\n"
        "print(sorted(m for m in sys.modules if m.startswith(('exporter.simulator', 'exporter.demo'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    return list(ast.literal_eval(out.stdout.strip()))


def test_run_never_loads_the_simulator_which_simulate_and_demo_load() -> None:
    """The daemon's commands leave the simulator unloaded; simulate and demo (and only they) import it."""
    for command in ("run", "once", "check-config", "healthcheck"):
        assert loaded_by(command) == [], command
    for command in ("simulate", "demo"):
        assert {"exporter.demo", "exporter.simulator"} <= set(loaded_by(command)), command


def test_the_exception_tree_is_drawn_in_errors_py_as_the_classes_are() -> None:
    """errors.py's docstring draws every exception class under its parent, and no other module of the product
    defines a public exception class."""
    from exporter import errors

    doc = errors.__doc__ or ""
    drawing = doc[doc.index("::") :]
    drawn: dict[str, str] = {}
    parents: list[tuple[int, str]] = []
    for line in drawing.splitlines()[1:]:
        match = re.match(r"( *)([A-Z]\w+Error)\b", line)
        if not match:
            continue
        depth = len(match.group(1))
        while parents and parents[-1][0] >= depth:
            parents.pop()
        drawn[match.group(2)] = parents[-1][1] if parents else "Exception"
        parents.append((depth, match.group(2)))
    defined = {
        name: cls.__bases__[0].__name__
        for name, cls in vars(errors).items()
        if isinstance(cls, type) and issubclass(cls, Exception) and cls.__module__ == errors.__name__
    }
    assert drawn == defined
    elsewhere = {
        f"{path.name}:{node.name}"
        for path in PACKAGE.rglob("*.py")
        if "simulator" not in path.parts and path.name != "errors.py"
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.ClassDef)
        and not node.name.startswith("_")
        and any(getattr(b, "id", "").endswith(("Error", "Exception")) for b in node.bases)
    }
    assert elsewhere == set()


def test_every_module_says_where_its_tests_are() -> None:
    """tests/conftest.py's table names every product module and only test files that exist."""
    from tests import conftest

    table = {}
    for line in (conftest.__doc__ or "").splitlines():
        match = re.fullmatch(r" {4}(\S+) +(\S.*)", line)
        if match:
            table[match.group(1)] = [t.strip() for t in match.group(2).split(",")]
    modules = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert modules | {"simulator/"} == set(table)
    for name in (t for tests in table.values() for t in tests):
        assert (ROOT / "tests" / name).exists() or (ROOT / "tests" / f"{name}.py").exists(), name
