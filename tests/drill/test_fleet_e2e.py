"""The fleet drill end to end: real servers, proxies and uvicorn workers, both fleets at once."""

from __future__ import annotations

import pytest

from outlast.drill._fleet import FLEET_SCENARIOS, FleetConfig, run_fleet
from outlast.drill._fleet_plot import fleet_svg

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

# The issue asks for every worker serving <= 2 s after the database returns;
# the drill times that from the fault's removal to the 200 reaching the
# drill's own client, which a busy 2-core CI machine can delay: a second more.
SERVING_BOUND = 3.0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_fleet_with_outlast_reconnects_without_a_storm_and_serves_again() -> None:
    config = FleetConfig(
        containers=2,
        workers=2,
        duration=3.0,
        warmup=2.0,
        observe=4.0,
        max_recovery=SERVING_BOUND,
    )
    result = run_fleet(config)
    good, plain = result.side(True), result.side(False)
    assert good is not None and plain is not None
    assert [o.scenario for o in good.outages] == list(FLEET_SCENARIOS)
    assert [o.scenario for o in plain.outages] == list(FLEET_SCENARIOS)

    # With outlast: every check, i.e. a bounded login rate, no 53300 the fleet
    # caused itself, and every worker answering 200 soon after each outage.
    assert good.passed, [c for c in good.checks if not c.passed]
    assert good.server_53300 == 0
    assert good.peak_attempts <= config.storm_limit * config.size
    for o in good.outages:
        assert o.silent == 0 and o.last_200 is not None and o.last_200 <= SERVING_BOUND, o
        assert o.errors == 0, o  # 503s, never a 500 or a hang
    # The faults really happened to both fleets: 503s with outlast, errors without.
    assert all(o.unavailable > 0 for o in good.outages if o.scenario != "restart")
    assert all(o.errors > 0 for o in plain.outages if o.scenario != "restart")

    # Side by side: while logins are refused, the fleet without outlast logs in
    # again for every request (each failed request cost a login), and the one
    # with outlast answers most requests 503 without one (its breakers probe).
    # Ratios, not rates: a loaded machine sends fewer requests to both.
    for name in ("neon_endpoint_disabled", "too_many_connections"):
        [g] = [o for o in good.outages if o.scenario == name]
        [p] = [o for o in plain.outages if o.scenario == name]
        assert p.attempts >= 0.8 * p.errors > 0, p
        assert 0 < g.attempts < g.unavailable, g
    [injected] = [o for o in plain.outages if o.scenario == "too_many_connections"]
    assert injected.injected_53300 > 0  # the proxy's 53300s are counted apart
    # Sessions were sampled from pg_stat_activity all along.
    assert any(s.server_connections for s in good.seconds)
    assert "<svg" in fleet_svg(result)
