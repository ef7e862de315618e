"""What a runner reports about the schema: where it is, where it should be, what is left."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SchemaState"]


def _short(revisions: tuple[str, ...], limit: int = 3) -> str:
    if not revisions:
        return "base"
    shown = ",".join(revisions[:limit])
    return shown if len(revisions) <= limit else f"{shown},+{len(revisions) - limit}"


@dataclass(frozen=True, slots=True)
class SchemaState:
    """One lock-free reading of the schema's migration state.

    `current`: what the database records as applied (Alembic: the version
    table's heads; Django and SQL files: the last applied migration of each
    app / the last file). `target`: where this code wants it (Alembic's heads).
    `pending`: the migrations still to apply, in order. `unknown`: applied
    migrations this code does not know — the database is *ahead* of this
    code (a newer release migrated it), which counts as reached.
    """

    current: tuple[str, ...]
    target: tuple[str, ...]
    pending: tuple[str, ...]
    unknown: tuple[str, ...] = ()

    @property
    def at_target(self) -> bool:
        """True when nothing is pending (the database is at or ahead of the target)."""
        return not self.pending

    @property
    def ahead(self) -> bool:
        """True when the database holds migrations this code does not know."""
        return bool(self.unknown) and not self.pending

    def describe(self) -> str:
        """``at head 0004``, ``2 pending (database at 0002, head 0004)``, ``ahead ...``."""
        if self.pending:
            return (
                f"{len(self.pending)} pending (database at {_short(self.current)},"
                f" head {_short(self.target)})"
            )
        if self.unknown:
            return (
                f"ahead: database at {_short(self.current)} (unknown here: {_short(self.unknown)})"
            )
        return f"at head {_short(self.target)}"
