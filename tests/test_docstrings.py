"""numpydoc validation of every public object (as scikit-learn's test_docstrings does).

Public means: listed in the ``__all__`` of ``skquant`` or of a public sub-module, plus
the public methods and properties of those classes. The checks to skip come from
``[tool.numpydoc_validation]`` in pyproject.toml, so the hook and this test agree.
"""

import importlib
import inspect
import tomllib
from pathlib import Path

import pytest

numpydoc_validate = pytest.importorskip("numpydoc.validate")

PUBLIC_MODULES = [
    "skquant.theory",
    "skquant",
    "skquant.metrics",
    "skquant.datasets",
    "skquant.utils.discovery",
]
CONFIG = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())[
    "tool"
]["numpydoc_validation"]
IGNORED = set(CONFIG["checks"]) - {"all"}


def _public_objects():
    seen = set()
    for modname in PUBLIC_MODULES:
        module = importlib.import_module(modname)
        for name in getattr(module, "__all__", []):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            path = f"{obj.__module__}.{obj.__qualname__}"
            if path in seen:
                continue
            seen.add(path)
            yield f"{modname}.{name}"
            if inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr.startswith("_"):
                        continue
                    if inspect.isfunction(member) or isinstance(member, property):
                        yield f"{modname}.{name}.{attr}"
                for base in obj.__mro__[1:]:
                    if base.__module__.startswith("skquant"):
                        for attr, member in vars(base).items():
                            if (
                                not attr.startswith("_")
                                and attr not in vars(obj)
                                and (inspect.isfunction(member))
                            ):
                                yield f"{modname}.{name}.{attr}"


@pytest.mark.parametrize("import_path", sorted(set(_public_objects())))
def test_docstring(import_path):
    result = numpydoc_validate.validate(import_path)
    errors = [(code, msg) for code, msg in result["errors"] if code not in IGNORED]
    if isinstance(result.get("obj"), property):
        # a property documents what it is; it has no Returns section of its own
        errors = [(c, m) for c, m in errors if c not in {"RT01", "PR01"}]
    assert not errors, "\n".join(f"{import_path}: {c} {m}" for c, m in errors)
