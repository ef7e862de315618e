"""Whole-transaction retries that never replay a COMMIT whose outcome is unknown.

`machine` is an I/O-free decision generator with thin sync and async shells;
`adapters` is the small protocol each driver integration implements.
"""
