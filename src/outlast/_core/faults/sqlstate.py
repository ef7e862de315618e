"""SQLSTATE codes -> (FaultKind, reason).

The table follows PostgreSQL's errcodes (Appendix A of the manual). Exact codes
come first; a code that is not listed falls back on its two-character class.
Npgsql's ``IsTransient`` list (08*, 53*, 57P01-05, 58*, 40001, 40P01, 55P03,
55006) is the broadest published classification of transient codes; every one
of those maps to a transient kind here.
"""

from __future__ import annotations

from .fault import FaultKind

__all__ = ["LOGIN_SQLSTATES", "lookup_sqlstate"]

_U = FaultKind.UNAVAILABLE
_C = FaultKind.CONFLICT
_R = FaultKind.READ_ONLY
_T = FaultKind.TIMEOUT
_P = FaultKind.PERMANENT

_EXACT: dict[str, tuple[FaultKind, str]] = {
    # Class 08 - connection exception
    "08000": (_U, "connection_exception"),
    "08003": (_U, "connection_lost"),  # connection_does_not_exist
    "08006": (_U, "connection_lost"),  # connection_failure
    "08001": (_U, "connection_refused"),  # sqlclient_unable_to_establish_sqlconnection
    "08004": (_U, "connection_rejected"),  # sqlserver_rejected_establishment_of_sqlconnection
    "08007": (_U, "connection_lost"),  # transaction_resolution_unknown
    "08P01": (_U, "protocol_violation"),
    # Class 53 - insufficient resources
    "53000": (_U, "out_of_resources"),
    "53100": (_U, "out_of_resources"),  # disk_full
    "53200": (_U, "out_of_resources"),  # out_of_memory
    "53300": (_U, "too_many_connections"),
    # One statement over a per-statement limit (temp_file_limit, max slots):
    # the same statement would hit it again, and the database is fine.
    "53400": (_P, "configuration_limit_exceeded"),
    # Class 57 - operator intervention
    "57000": (_U, "operator_intervention"),
    "57014": (_T, "query_canceled"),  # refined by message: statement_timeout
    "57P01": (_U, "admin_shutdown"),
    "57P02": (_U, "crash_shutdown"),
    "57P03": (_U, "starting_up"),  # cannot_connect_now (refined: shutting_down)
    "57P04": (_U, "database_dropped"),
    "57P05": (_U, "idle_session_timeout"),
    # Class 58 - system error (errors external to PostgreSQL itself)
    "58000": (_U, "system_error"),
    "58030": (_U, "io_error"),
    "58P01": (_P, "undefined_file"),
    "58P02": (_P, "duplicate_file"),
    # Class 40 - transaction rollback
    "40000": (_C, "transaction_rollback"),
    "40001": (_C, "serialization_failure"),
    "40002": (_P, "integrity_constraint_violation"),
    "40003": (_U, "statement_completion_unknown"),
    "40P01": (_C, "deadlock"),
    # Class 55 - object not in prerequisite state
    "55P03": (_C, "lock_not_available"),
    "55006": (_C, "object_in_use"),
    "55000": (_P, "object_not_in_prerequisite_state"),
    # Class 25 - invalid transaction state
    "25006": (_R, "read_only_transaction"),
    "25P02": (_P, "in_failed_transaction"),
    "25P03": (_T, "idle_in_transaction_timeout"),
    "25P04": (_T, "transaction_timeout"),
    # Class 28 - invalid authorization specification
    "28000": (_P, "auth_failed"),
    "28P01": (_P, "auth_failed"),
    # Class 3D - invalid catalog name
    "3D000": (_P, "invalid_catalog"),
    "3F000": (_P, "invalid_schema"),
    # Class 42 - syntax error or access rule violation
    "42601": (_P, "syntax_error"),
    "42501": (_P, "insufficient_privilege"),
    "42P01": (_P, "undefined_table"),
    "42703": (_P, "undefined_column"),
    "42883": (_P, "undefined_function"),
    "42704": (_P, "undefined_object"),
    "42P02": (_P, "undefined_parameter"),
    "42P07": (_P, "duplicate_table"),
    "42701": (_P, "duplicate_column"),
    "42710": (_P, "duplicate_object"),
    "42804": (_P, "datatype_mismatch"),
    "42803": (_P, "grouping_error"),
    "42702": (_P, "ambiguous_column"),
    # Class 23 - integrity constraint violation
    "23000": (_P, "integrity_constraint_violation"),
    "23001": (_P, "restrict_violation"),
    "23502": (_P, "not_null_violation"),
    "23503": (_P, "foreign_key_violation"),
    "23505": (_P, "unique_violation"),
    "23514": (_P, "check_violation"),
    "23P01": (_P, "exclusion_violation"),
    # Class 22 - data exception
    "22P02": (_P, "invalid_text_representation"),
    "22001": (_P, "string_data_right_truncation"),
    "22003": (_P, "numeric_value_out_of_range"),
    "22012": (_P, "division_by_zero"),
    "22007": (_P, "invalid_datetime_format"),
    "22008": (_P, "datetime_field_overflow"),
    # Others worth a name
    "0A000": (_P, "feature_not_supported"),
    "26000": (_P, "invalid_sql_statement_name"),
    "34000": (_P, "invalid_cursor_name"),
    "54000": (_P, "program_limit_exceeded"),
    "54001": (_P, "statement_too_complex"),
    "XX000": (_P, "internal_error"),
    "XX001": (_P, "data_corrupted"),
    "XX002": (_P, "index_corrupted"),
    "P0001": (_P, "raise_exception"),
}

_CLASSES: dict[str, tuple[FaultKind, str]] = {
    "08": (_U, "connection_exception"),
    "53": (_U, "out_of_resources"),
    "57": (_U, "operator_intervention"),
    "58": (_U, "system_error"),
    "40": (_C, "transaction_rollback"),
    "25": (_P, "invalid_transaction_state"),
    "28": (_P, "auth_failed"),
    "3D": (_P, "invalid_catalog"),
    "42": (_P, "syntax_error_or_access_rule_violation"),
    "23": (_P, "integrity_constraint_violation"),
    "22": (_P, "data_exception"),
    "55": (_P, "object_not_in_prerequisite_state"),
    "0A": (_P, "feature_not_supported"),
    "XX": (_P, "internal_error"),
    "P0": (_P, "plpgsql_error"),
}

LOGIN_SQLSTATES = frozenset({"57P03", "53300", "28P01", "28000", "08001", "08004"})
"""Codes that the server only sends while a session is being established."""


def lookup_sqlstate(code: str) -> tuple[FaultKind, str]:
    """Return (kind, reason) for a five-character SQLSTATE; unknown classes are PERMANENT."""
    hit = _EXACT.get(code)
    if hit is not None:
        return hit
    hit = _CLASSES.get(code[:2])
    if hit is not None:
        return hit
    if code.startswith(("00", "01", "02")):
        # success / warning / no data: not an error; treat conservatively
        return (_P, "unexpected_sqlstate")
    return (_P, "database_error")
