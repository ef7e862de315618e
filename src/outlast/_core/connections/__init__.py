"""Connections: DSNs, hardening presets, connect retries, socket deadlines, start-up wait.

The driver integrations (``outlast.psycopg``, ``outlast.sqlalchemy``, ...) turn
these driver-neutral pieces into hardened pools and engines.
"""
