"""The core: everything outlast knows without a driver or a framework.

Standard library only (a test imports every module here in a fresh interpreter
and fails on any third-party import). The integrations (``outlast.sqlalchemy``,
``outlast.flask``, ...) and the tools (``outlast.cli``, ``outlast.drill``, ...)
build on it; nothing here imports them. Each sub-package is one concept, and
the lower ones never import the higher ones:

- `faults`: the fault model -- `Fault`, `classify()`, SQLSTATEs, driver message
  texts, the exception tree and redaction of secrets;
- `timing`: clocks, durations, the request budget and operation durations (a
  *timeout* is a duration, a *deadline* an instant);
- `guard`: the Guard -- retry policy, circuit breaker, state, events, admission;
- `transactions`: whole-transaction retries and lost-COMMIT resolution;
- `connections`: DSNs, hardening presets, connect retries, socket deadlines and
  the start-up wait;
- `web`: the framework-neutral half of the web integrations and health;
- `supervise`: supervised threads and tasks, and `outlast.loop`;
- `telemetry`: one snapshot of all of the above for the metrics exporters.

The public names are re-exported from `outlast` (and `outlast.supervise`);
nothing here is imported by users directly.
"""
