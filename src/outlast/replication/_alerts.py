"""The Prometheus alert rules that ship with this package (``alerts.yml``)."""

from __future__ import annotations

from importlib import resources
from importlib.resources.abc import Traversable

__all__ = ["alert_rules", "alert_rules_file"]

_NAME = "alerts.yml"


def alert_rules_file() -> Traversable:
    """The rule file inside the installed package (use ``importlib.resources.as_file``
    for a real path when the package is zipped)."""
    return resources.files(__package__ or "outlast.replication") / _NAME


def alert_rules() -> str:
    """The rules as YAML text, ready for Prometheus' ``rule_files``."""
    return alert_rules_file().read_text(encoding="utf-8")
