"""Telemetry: one read model of everything outlast knows, for the metrics exporters.

`snapshot()` (in `snapshot`) gathers the live Guards' state and counters, the
registered pools' figures, the supervisors' tasks, the web integrations'
answers and the operation-duration histograms (`operations`) into one
immutable value. ``outlast.prometheus`` and ``outlast.otel`` only translate
it: nothing is counted twice, and nothing is sprinkled through the code.
"""
