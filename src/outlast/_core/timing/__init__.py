"""Time: the injectable clock, durations, and the request budget.

Vocabulary used everywhere in outlast: a *timeout* is a duration (seconds, or a
`timedelta`), a *deadline* is an instant on the monotonic clock. `durations`
holds the one rule that validates every duration option; `operations` the
histograms of database operation durations; `budget` holds the
request budget (its deadline lives in a context variable, so code deep in a
request can ask what is left).
"""
