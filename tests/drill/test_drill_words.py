"""What the scorecards say, in words, from constructed results (pure logic); and the
reference service's three builds chosen by its settings."""

from __future__ import annotations

import pytest
from rich.console import Console

import outlast
from outlast.demo._demo import _comparison
from outlast.demo._settings import settings_from_env
from outlast.drill import (
    DrillResult,
    FaultWindow,
    Ledger,
    RequestRecord,
    ScenarioResult,
    evaluate,
    render_html,
)
from outlast.drill._console import scorecard_table
from outlast.drill._traffic import HealthSample


def _rec(kind, start, outcome, status=None, latency=0.05, retry_after="1"):
    return RequestRecord(kind, start, latency, status, outcome, retry_after=retry_after)


def _health(at, alive):
    return HealthSample(at, 200 if alive else 503, None, {"loop:count_leads": alive})


def _judge(recs, *, health=(), writes=(), budget=1.0, name="down"):
    """A scenario (fault 2-8 s of 0-20 s) judged from these records, health and writes."""
    result = ScenarioResult(name, 0.0, 20.0, [FaultWindow("down", "down", 2.0, 8.0)])
    if writes:
        lg = Ledger(prefix="w")
        present = {}
        for outcome, stored in writes:
            wid = lg.new_id()
            lg.record(wid, outcome, problem=outcome == "503", at=3.0)
            present[wid] = stored
        result.ledger = lg.check(present, window=(0.0, 20.0))
    return evaluate(
        result, recs, list(health), budget=budget, max_recovery=3.0,
        has_ping=True, has_live=True, health_supported=bool(health) or None,
    )  # fmt: skip


def _plain_service_in_an_outage():
    """500s, a loop that died, writes whose clients never learnt their fate."""
    recs = [_rec("read", 1.0, "ok", 200), _rec("read", 9.0, "ok", 200)]
    recs += [_rec("read", 3.0 + i / 100, "5xx", 500) for i in range(289)]
    recs += [_rec("ping", 3.0, "ok", 200), _rec("live", 3.0, "ok", 200)]
    health = [_health(1.0, True), _health(4.0, False), _health(10.0, False)]
    writes = [("ok", 1)] * 3 + [("5xx", 1)] * 12 + [("5xx", 0)] * 19
    return _judge(recs, health=health, writes=writes)


def test_a_failed_scenario_says_what_happened_in_plain_words():
    s = _plain_service_in_an_outage()
    assert not s.passed
    assert (
        s.in_words
        == "289 answered 500, background loop died, 31 writes left unknown (12 of them stored)"
    )
    assert s.tally.answered_5xx == {500: 289} and s.tally.dead_loops == ["loop:count_leads"]
    assert s.as_dict()["in_words"] == s.in_words


def test_a_loop_killed_by_an_earlier_fault_is_still_dead():
    recs = [_rec("read", 1.0, "ok", 200), _rec("read", 9.0, "ok", 200)]
    health = [_health(1.0, False), _health(10.0, False)]
    assert _judge(recs, health=health).in_words == "background loop still dead"


def test_hangs_and_doubled_writes_in_words():
    # The usual fix: requests wait in backoff past the budget, a replayed
    # write is stored twice, and nothing answers 500.
    recs = [_rec("read", 1.0, "ok", 200), _rec("read", 9.0, "ok", 200)]
    recs += [_rec("read", 3.0, "ok", 200, latency=2.5), _rec("write", 4.0, "timeout", None, 2.0)]
    recs += [_rec("write", 5.0, "timeout", None, 2.0)]
    s = _judge(recs, writes=[("ok", 2), ("ok", 1), ("timeout", 1), ("timeout", 0)])
    assert s.in_words == (
        "3 requests past the 1 s budget (2 timed out), 1 write stored twice, "
        "2 writes left unknown (1 of them stored)"
    )
    assert (s.tally.past_budget, s.tally.unanswered) == (3, 2)


def test_other_failures_in_words():
    recs = [_rec("read", 1.0, "ok", 200), _rec("read", 15.0, "ok", 200, latency=0.2)]  # late
    recs += [_rec("read", 3.0, "503", 503, retry_after=None), _rec("read", 3.1, "503", 503)]
    recs += [_rec("ping", 3.0, "503", 503), _rec("ping", 4.0, "ok", 200)]
    recs += [_rec("live", 3.0, "refused", None)]
    s = _judge(recs, writes=[("ok", 0), ("503", 1)])
    assert s.in_words == (
        "1 of 3 503s without Retry-After, no-database route failed 1 of 2 times, "
        "liveness failed 1 of 1 time, recovered only after 7.2 s, "
        "1 acknowledged write lost, 1 write answered as failed but stored"
    )


def test_a_passing_scenario_says_how_it_passed():
    recs = [_rec("read", 1.0, "ok", 200), _rec("read", 8.5, "ok", 200, latency=0.1)]
    recs += [_rec("read", 3.0 + i / 10, "503", 503) for i in range(40)]
    s = _judge(recs, writes=[("ok", 1), ("503", 0)])
    assert s.passed and s.in_words == "40 answered 503, recovered in 0.6 s"


def test_errors_and_unfired_faults_in_words():
    s = ScenarioResult("restart", 0.0, 1.0, [], error="RuntimeError: no restart command")
    assert s.in_words == "error: RuntimeError: no restart command"
    quiet = ScenarioResult("commit_lost", 0.0, 1.0, [], exercised=False)
    assert quiet.in_words == "not exercised: its fault never fired"


def _drill(label, scenario):
    return DrillResult(label, "http://127.0.0.1:1", 1.0, [scenario], [], [], None, 20.0)


def test_the_report_and_the_terminal_tables_use_the_same_words():
    bad = _drill("without outlast", _plain_service_in_an_outage())
    recs = [_rec("read", 1.0, "ok", 200), _rec("read", 8.5, "ok", 200, latency=0.1)]
    good = _drill("with outlast", _judge(recs + [_rec("read", 3.0, "503", 503)]))
    html = render_html([good, bad])
    summary = html.split('<table class="summary"', 1)[1].split("</table>", 1)[0]
    assert (
        "✗ 289 answered 500, background loop died, 31 writes left unknown (12 of them stored)"
        in summary
    )
    assert "✓ pass: 1 answered 503, recovered in 0.6 s" in summary
    scorecard = html.split('<table class="scorecard"', 2)[2]
    assert "background loop died" in scorecard and "289 answered 500" in scorecard

    console = Console(width=220, record=True, color_system=None)
    console.print(_comparison([good, bad]))
    console.print(scorecard_table(bad))
    text = " ".join(console.export_text().split())
    assert "289 answered 500, background loop died" in text
    assert "pass: 1 answered 503, recovered in 0.6 s" in text


def test_the_reference_service_is_built_one_of_three_ways():
    assert settings_from_env({}).mode == "outlast"
    assert settings_from_env({"OUTLAST_ENABLED": "0"}).mode == "plain"
    by_hand = settings_from_env({"OUTLAST_ENABLED": "1", "OUTLAST_MODE": "Seeds"})
    assert (by_hand.mode, by_hand.enabled) == ("seeds", False)
    with pytest.raises(outlast.ConfigurationError, match="OUTLAST_MODE"):
        settings_from_env({"OUTLAST_MODE": "tenacity"})
