"""The house rules of the package layout, checked on the code itself.

The rooms and the one way their imports go are an import-linter contract
(``[tool.importlinter]`` in pyproject.toml); the tests here run it and check what
it has no contract for: no import cycle at all (function-level imports included),
no module importing a package root, no module past the size a reader takes in, and
the alphabet kinds compared only inside the alphabet module.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

grimp = pytest.importorskip("grimp")

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "skquant"
MAX_LINES = 800


@pytest.fixture(scope="module")
def graph():
    return grimp.build_graph("skquant", include_external_packages=False)


def _cycles(graph):
    """Strongly connected components of more than one module (Tarjan)."""
    modules = sorted(graph.modules)
    edges = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in modules}
    index, low, stack, on, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))
    for m in modules:
        if m not in index:
            visit(m)
    return out


def test_import_contract_is_kept():
    linter = Path(sys.executable).with_name("lint-imports")
    if not linter.exists():
        pytest.skip("import-linter is not installed (pip install skquant[tests])")
    proc = subprocess.run(
        [str(linter), "--no-cache"], cwd=ROOT, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "0 broken" in proc.stdout


def test_no_import_cycle(graph):
    assert _cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    # the check above could pass by never finding anything: give it one
    class Toy:
        modules = {"a", "b", "c"}

        def find_modules_directly_imported_by(self, m):
            return {"a": {"b"}, "b": {"a"}, "c": {"a"}}[m]

    assert _cycles(Toy()) == [["a", "b"]]


@pytest.mark.parametrize("root", ["skquant", "skquant.torch"])
def test_no_module_imports_a_package_root(graph, root):
    if root not in graph.modules:
        pytest.skip(f"{root} is not importable here")
    importers = sorted(graph.find_modules_that_directly_import(root))
    assert importers == []


def test_modules_are_short():
    long = {
        str(p.relative_to(ROOT)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert long == {}


_EQUALS = re.compile(
    r"""[=!]=\s*["'](binary|ternary)["']|["'](binary|ternary)["']\s*[=!]="""
)
_MEMBER = re.compile(r"""\bin\s*[\(\[{][^)\]}]*["'](binary|ternary)["']""")


def compares_alphabet(code):
    """Whether a line of code compares something with an alphabet kind string."""
    loop = code.lstrip().startswith(("for ", "async for "))
    return bool(_EQUALS.search(code) or (not loop and _MEMBER.search(code)))


def test_alphabet_kinds_compared_only_in_the_alphabet_module():
    found = []
    for p in PACKAGE.rglob("*.py"):
        if p.name == "_alphabets.py":
            continue
        for i, line in enumerate(p.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            if compares_alphabet(code):
                found.append(f"{p.relative_to(ROOT)}:{i}: {line.strip()}")
    assert found == []


def test_alphabet_pattern_catches_comparisons():
    hits = [
        'if alphabet == "binary":',
        "kind != 'ternary'",
        'if a not in ("uniform", "ternary"):',
    ]
    misses = [
        'bits=(4, 3, 2, "ternary")',
        'label = "binary"',
        'for b in (4, 3, 2, "ternary"):',
    ]
    assert all(compares_alphabet(h) for h in hits)
    assert not any(compares_alphabet(m) for m in misses)


def _front_ends():
    import skquant

    fronts = [skquant.adaptive_quantize_mlp]
    try:
        import skquant.torch
    except ImportError:
        return fronts
    return fronts + [skquant.torch.adaptive_quantize_model]


@pytest.mark.parametrize("front", _front_ends(), ids=lambda f: f.__name__)
def test_loop_options_are_defined_once(front):
    import inspect

    from skquant._precision._options import LOOP_OPTIONS, LOOP_OPTIONS_DOC

    params = inspect.signature(front).parameters
    taken = {n: params[n].default for n in LOOP_OPTIONS if n in params}
    assert taken == LOOP_OPTIONS  # every option, with the one default
    assert "{loop_options}" not in front.__doc__
    assert LOOP_OPTIONS_DOC in front.__doc__


def test_the_project_cites_no_guide_outside_it():
    # the conventions live in docs/contributing.rst and docs/architecture.rst
    outside = re.compile(r"\b(STYLE|METHODS|ARCHITECTURE)\.md\b|shared/spec")
    found = []
    for folder in ("skquant", "tests", "benchmarks", "docs"):
        for p in (ROOT / folder).rglob("*"):
            if p.suffix not in {".py", ".rst", ".md"} or "_build" in p.parts:
                continue
            if p.parts[-2:] == ("tests", "test_architecture.py"):
                continue
            if "auto_examples" in p.parts or "generated" in p.parts:
                continue
            text = p.read_text(errors="replace")
            found += [f"{p.relative_to(ROOT)}" for _ in outside.findall(text)[:1]]
    for name in ("README.md", "CONTRIBUTING.md"):
        if outside.search((ROOT / name).read_text()):
            found.append(name)
    assert found == []
