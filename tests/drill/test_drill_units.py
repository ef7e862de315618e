"""Pure logic of the drill: ledger, checks, scenarios, health parsing, routes."""

from __future__ import annotations

import re

import pytest

from outlast.drill import (
    FaultWindow,
    Ledger,
    RequestRecord,
    Route,
    ScenarioResult,
    background_status,
    builtin,
    evaluate,
    load_scenarios,
    write_outcome,
)


def test_ledger_write_outcomes_follow_jepsen_classes():
    assert write_outcome("ok", problem=False) == "ok"
    assert write_outcome("503", problem=True) == "failed"
    assert write_outcome("503", problem=False) == "unknown"
    assert write_outcome("refused", problem=False) == "failed"
    for o in ("timeout", "5xx", "reset", "error"):
        assert write_outcome(o, problem=True) == "unknown"
    # outlast's 503 for an unresolved COMMIT: a problem body, yet maybe applied
    assert write_outcome("503", problem=True, outcome_unknown=True) == "unknown"


def test_ledger_records_an_outcome_unknown_503_as_unknown():
    lg = Ledger(prefix="u")
    a, b = lg.new_id(), lg.new_id()
    lg.record(a, "503", problem=True, outcome_unknown=True)
    lg.record(b, "503", problem=True)
    res = lg.check({a: 1})  # the unknown one turned out applied: allowed
    assert (res.failed, res.unknown, res.unknown_present) == (1, 1, 1)
    assert res.unknown_told == 1  # the service said so: the client knows to look
    assert res.passed and not res.failed_present


def test_ledger_check_finds_lost_doubled_failed_applied_and_unexpected():
    lg = Ledger(prefix="t")
    ids = [lg.new_id() for _ in range(6)]
    assert len(set(ids)) == 6
    lg.record(ids[0], "ok")  # present once: fine
    lg.record(ids[1], "ok")  # missing: lost
    lg.record(ids[2], "ok")  # twice: doubled
    lg.record(ids[3], "503", problem=True)  # failed but present
    lg.record(ids[4], "timeout")  # unknown, present
    lg.record(ids[5], "timeout")  # unknown, absent
    present = {ids[0]: 1, ids[2]: 2, ids[3]: 1, ids[4]: 1, "t-999999": 1}
    res = lg.check(present)
    assert res.lost == [ids[1]]
    assert res.duplicated == [ids[2]]
    assert res.failed_present == [ids[3]]
    assert res.unexpected == ["t-999999"]
    assert (res.acknowledged, res.failed, res.unknown, res.unknown_present) == (3, 1, 2, 1)
    assert not res.passed
    clean = lg.check({ids[0]: 1, ids[1]: 1, ids[2]: 1})
    assert clean.passed


def test_ledger_window_judges_only_writes_started_inside():
    lg = Ledger(prefix="w")
    a, b = lg.new_id(), lg.new_id()
    lg.record(a, "ok", at=1.0)
    lg.record(b, "ok", at=5.0)
    res = lg.check({}, window=(0.0, 2.0))
    assert res.lost == [a] and res.attempted == 1


def test_ledger_extracts_ids_once_per_item_from_lists_and_envelopes():
    lg = Ledger(prefix="x")
    i = lg.new_id()
    body = {"items": [{"id": i, "email": f"{i}@example.com"}, {"id": i}], "count": 2}
    assert lg.find_ids(body)[i] == 2
    assert lg.find_ids([{"ref": i}])[i] == 1
    assert lg.find_ids({"other": "y-000001"}) == {}


def _rec(kind, start, outcome, status=None, latency=0.05, retry_after="1"):
    return RequestRecord(kind, start, latency, status, outcome, retry_after=retry_after)


def _scenario():
    return ScenarioResult("down", 0.0, 20.0, [FaultWindow("down", "down", 2.0, 8.0)])


def _eval(recs, **kw):
    opts = {"budget": 1.0, "max_recovery": 3.0, "has_ping": True, "has_live": True}
    opts["health_supported"] = None
    opts.update(kw)
    return evaluate(_scenario(), recs, [], **opts)


def test_checks_pass_for_clean_503s_and_measure_first_503_and_recovery():
    recs = [_rec("read", t / 10, "ok", 200) for t in range(20)]
    recs += [_rec("read", 2.0 + t / 10, "503", 503) for t in range(3, 60)]
    recs += [_rec("read", 9.0, "ok", 200, latency=0.2)]
    recs += [_rec("ping", t, "ok", 200) for t in range(20)] + [_rec("live", 1.0, "ok", 200)]
    res = _eval(recs)
    assert res.passed, [c.as_dict() for c in res.checks]
    assert res.first_503 == pytest.approx(0.3)
    assert res.recovery == pytest.approx(1.2)


@pytest.mark.parametrize(
    ("bad", "check"),
    [
        (_rec("read", 3.0, "5xx", 500), "no_500"),
        (_rec("read", 3.0, "503", 503, retry_after=None), "retry_after"),
        (_rec("read", 3.0, "503", 503, latency=1.5), "budget"),
        (_rec("read", 3.0, "timeout", None, latency=1.5), "budget"),
        (_rec("ping", 3.0, "503", 503), "ping"),
        (_rec("live", 3.0, "refused", None), "live"),
    ],
)
def test_checks_each_flaw_fails_its_check(bad, check):
    recs = [
        _rec("read", 9.0, "ok", 200),
        _rec("ping", 1.0, "ok", 200),
        _rec("live", 1.0, "ok", 200),
        bad,
    ]
    res = _eval(recs)
    failed = {c.name for c in res.checks if c.passed is False}
    assert failed == {check}


def _settled_check(entries):
    """The "settled" check for a scenario whose writes had these (outcome, kwargs)."""
    lg = Ledger(prefix="s")
    present = {}
    for outcome, kwargs in entries:
        wid = lg.new_id()
        lg.record(wid, outcome, at=3.0, **kwargs)
        present[wid] = 1 if outcome != "503" or kwargs.get("outcome_unknown") else 0
    result = _scenario()
    result.ledger = lg.check(present, window=(0.0, 20.0))
    res = evaluate(
        result, [_rec("read", 9.0, "ok", 200)], [], budget=1.0, max_recovery=5.0,
        has_ping=False, has_live=False, health_supported=None,
    )  # fmt: skip
    assert res.check("writes").passed is True  # Jepsen: an unknown may be applied
    return res.check("settled")


def test_checks_a_client_left_guessing_fails_the_settled_check():
    settled = _settled_check([("ok", {}), ("5xx", {})])
    assert settled.passed is False and settled.title == "no client left guessing"
    assert settled.detail == "1 write left unknown (1 of them stored)"
    assert _settled_check([("ok", {}), ("timeout", {})]).passed is False


def test_checks_an_outcome_the_service_reported_unknown_is_settled():
    told = {"problem": True, "outcome_unknown": True}
    settled = _settled_check([("ok", {}), ("503", told)])
    assert settled.passed is True
    assert settled.detail.startswith("1 write reported unknown by the service")
    # one silent unknown among told ones still fails
    assert _settled_check([("503", told), ("reset", {})]).passed is False
    clean = _settled_check([("ok", {}), ("503", {"problem": True})])
    assert clean.passed is True and "definitely ok or failed" in clean.detail


def test_checks_recovery_fails_when_no_success_after_the_fault():
    res = _eval([_rec("read", 1.0, "ok", 200), _rec("read", 9.0, "5xx", 500)])
    assert res.check("recovery").passed is False
    slow = _eval([_rec("read", 12.0, "ok", 200)])
    assert slow.check("recovery").passed is False and slow.recovery == pytest.approx(4.05)


def test_background_status_reads_supervisor_and_plain_shapes():
    doc = {
        "status": "pass",
        "checks": {
            "postgres:connection": [{"status": "warn"}],
            "supervisor:tasks": [
                {"componentId": "count_leads", "status": "pass"},
                {"componentId": "mailer", "status": "fail"},
            ],
        },
    }
    assert background_status(doc) == {
        "supervisor:tasks:count_leads": True,
        "supervisor:tasks:mailer": False,
    }
    assert background_status({"worker": {"alive": False}}) == {"worker": False}
    assert background_status({"status": "pass"}) == {}
    assert background_status(None) == {}


def test_routes_parse_and_reject_nonsense():
    assert Route.parse("POST /api/leads") == Route("POST", "/api/leads")
    assert Route.parse("/health/live") == Route("GET", "/health/live")
    for bad in ("GET", "FETCH /x", "GET api", "GET /a /b"):
        with pytest.raises(ValueError):
            Route.parse(bad)


def test_builtin_scenarios_have_the_right_steps():
    down = builtin("down", duration=5, budget=2)
    assert [(s.fault, s.duration) for s in down.steps] == [("down", 5.0)]
    neon = builtin("neon_endpoint_disabled", duration=4, budget=2)
    assert neon.steps[0].fault == "reject_login"
    assert neon.steps[0].params == {"preset": "neon_endpoint_disabled"}
    assert neon.steps[1].fault == "terminate"
    flap = builtin("flapping", duration=10, budget=2)
    assert [s.at for s in flap.steps] == [0.0, 4.0, 8.0]
    assert builtin("latency", duration=3, budget=2).steps[0].params == {"ms": 2000}
    [cut] = builtin("commit_lost", duration=6, budget=2).steps
    assert (cut.fault, cut.at, cut.duration) == ("cut_after", 0.0, 6.0)
    assert cut.params["wait_reply"] is True  # the server commits; only the reply is lost
    assert 0.0 < cut.toxicity < 1.0  # a share of the COMMITs, not all
    assert re.search(cut.params["pattern"], "COMMIT", re.IGNORECASE)
    assert not re.search(cut.params["pattern"], "SELECT 'COMMIT'", re.IGNORECASE)
    with pytest.raises(ValueError, match="unknown scenario"):
        builtin("meteor", duration=1, budget=1)


def test_custom_scenarios_load_from_toml(tmp_path):
    f = tmp_path / "s.toml"
    f.write_text(
        "[scenarios.neon-suspend]\n"
        'description = "suspend"\n'
        "steps = [\n"
        '  { fault = "reject_login", at = 0, duration = 8, preset = "neon_endpoint_disabled" },\n'
        '  { fault = "terminate", at = 1 },\n'
        "]\n"
    )
    [(name, sc)] = load_scenarios(f).items()
    assert name == "neon-suspend" and sc.description == "suspend"
    assert sc.steps[0].params == {"preset": "neon_endpoint_disabled"}
    assert sc.steps[1].duration == 0.5 and sc.length == 8.0
    bad = tmp_path / "bad.toml"
    bad.write_text("[scenarios.x]\nsteps = [{ at = 1 }]\n")
    with pytest.raises(ValueError, match="needs fault"):
        load_scenarios(bad)
