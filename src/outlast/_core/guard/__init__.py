"""The Guard: one per database -- retries, circuit breaker, state and events.

`backoff` and `breaker` are policies (immutable values); `state` and `events`
are what a Guard knows and tells; `base` holds every decision (admission,
what a failure or success means, counting each fault once) and `guard` the
thin sync and async calling surface; `admission` gives work outside
``Guard.call`` (a web request) the breaker's one-probe-at-a-time rule.
"""
