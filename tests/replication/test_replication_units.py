"""Pure logic of outlast.replication: units, thresholds, verdicts, rates, offsets, outputs.

Values are built by hand here (no server): the rules are tested one by one,
including the corners a real server rarely shows on demand.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from outlast import ConfigurationError
from outlast.replication import (
    Lsn,
    OffsetNotSafe,
    OffsetVerdict,
    Report,
    ServerStatus,
    SlotChange,
    SlotStatus,
    Snapshot,
    Strategy,
    Thresholds,
    Verdict,
    log_slot_change,
    parse_bytes,
    render_prometheus,
    samples,
)
from outlast.replication._health import health_document
from outlast.replication._offsets import _Facts, decide
from outlast.replication._rate import RateWindow
from outlast.replication._thresholds import judge, missing_report

MB = 2**20
NOW = 1_700_000_000.0


def server(**kw) -> ServerStatus:
    base = {
        "version_num": 180000,
        "in_recovery": False,
        "current_lsn": Lsn(1000 * MB),
        "time": NOW,
        "system_identifier": "42",
    }
    return ServerStatus(**{**base, **kw})


def slot(**kw) -> SlotStatus:
    base = {
        "name": "cdc",
        "slot_type": "logical",
        "plugin": "pgoutput",
        "database": "app",
        "temporary": False,
        "active": True,
        "active_pid": 123,
        "restart_lsn": Lsn(990 * MB),
        "confirmed_flush_lsn": Lsn(995 * MB),
        "wal_status": "reserved",
        "safe_wal_size": None,
        "retained_bytes": 10 * MB,
        "flush_lag_bytes": 5 * MB,
    }
    return SlotStatus(**{**base, **kw})


def snap(*slots: SlotStatus, **server_kw) -> Snapshot:
    return Snapshot(server=server(**server_kw), slots=slots, taken_at=NOW, monotonic=0.0)


def verdict_of(s: SlotStatus, th: Thresholds | None = None, growth=None, **server_kw):
    return judge(s, snap(s, **server_kw), th or Thresholds(), growth_rate=growth)


# -- the package ----------------------------------------------------------------


def test_public_names_and_importing_loads_no_driver() -> None:
    import outlast.replication as replication

    assert len(set(replication.__all__)) == len(replication.__all__)  # ruff keeps it sorted
    for name in replication.__all__:
        obj = getattr(replication, name)
        if isinstance(obj, type):
            assert obj.__module__ == "outlast.replication", name
    code = (
        "import sys, outlast.replication\n"
        "print(sorted({'psycopg', 'psycopg2', 'sqlalchemy'} & set(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- units ----------------------------------------------------------------------


def test_lsn_text_round_trip_and_arithmetic() -> None:
    lsn = Lsn("16/B374D848")
    assert int(lsn) == (0x16 << 32) | 0xB374D848
    assert str(lsn) == "16/B374D848" and repr(lsn) == "Lsn('16/B374D848')"
    assert Lsn.parse(lsn) is lsn and Lsn.parse(5) == 5
    assert Lsn("0/10") - Lsn("0/0") == 16


@given(st.integers(min_value=0, max_value=2**64 - 1))
def test_lsn_round_trips(value: int) -> None:
    assert Lsn(str(Lsn(value))) == value


@pytest.mark.parametrize("bad", ["", "16", "16/", "x/1", "1/2/3", "123456789/0", -1, 2**64, True])
def test_bad_lsn(bad) -> None:
    with pytest.raises(ConfigurationError):
        Lsn(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (1, 1),
        ("1024", 1024),
        ("64MB", 64 * MB),
        ("64 MiB", 64 * MB),
        ("512kB", 512 * 1024),
        ("1.5GiB", 3 * 2**29),
        ("2TB", 2 * 2**40),
    ],
)
def test_parse_bytes(text, expected) -> None:
    assert parse_bytes(text, "size") == expected


@pytest.mark.parametrize("bad", ["", "MB", "-1MB", "1PB", "ten", 0, -5, True, 1.5])
def test_bad_sizes_name_the_option(bad) -> None:
    with pytest.raises(ConfigurationError, match="warn_bytes"):
        Thresholds(warn_bytes=bad)


# -- thresholds -------------------------------------------------------------------


def test_thresholds_defaults_and_values() -> None:
    th = Thresholds()
    assert (th.warn_fraction, th.critical_fraction) == (0.5, 0.8)
    assert (th.warn_time_to_loss, th.critical_time_to_loss) == (6 * 3600.0, 3600.0)
    assert th.inactive_warn == 1800.0 and th.warn_bytes is None and th.wal_budget is None
    custom = Thresholds(warn_bytes="1GB", inactive_warn=datetime.timedelta(minutes=5))
    assert custom.warn_bytes == 2**30 and custom.inactive_warn == 300.0
    assert custom == th.replace(warn_bytes=2**30, inactive_warn=300)
    assert hash(custom) == hash(th.replace(warn_bytes="1GB", inactive_warn=300.0))
    assert repr(custom) == "Thresholds(inactive_warn=300.0, warn_bytes=1073741824)"
    with pytest.raises(AttributeError):
        th.warn_bytes = 5  # type: ignore[misc]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"warn_bytes": "2GB", "critical_bytes": "1GB"}, "warn_bytes must be <= critical_bytes"),
        ({"warn_fraction": 0.9}, "warn_fraction must be <= critical_fraction"),
        ({"warn_fraction": 0}, "warn_fraction must be a fraction"),
        ({"critical_fraction": 1.5}, "critical_fraction must be a fraction"),
        ({"warn_time_to_loss": 60}, "warn_time_to_loss must be >= critical_time_to_loss"),
        ({"critical_time_to_loss": -1}, "critical_time_to_loss"),
        ({"inactive_warn": 0}, "inactive_warn"),
        ({"inactive_warn": 600, "inactive_critical": 60}, "inactive_warn must be <= inactive"),
        ({"rate_window": None}, "rate_window"),
    ],
)
def test_bad_thresholds(options, message) -> None:
    with pytest.raises(ConfigurationError, match=message):
        Thresholds(**options)


def test_replace_rejects_unknown_options() -> None:
    with pytest.raises(ConfigurationError, match="unknown threshold option"):
        Thresholds().replace(warn_megabytes=5)


# -- verdicts ---------------------------------------------------------------------


def test_healthy_slot_is_ok_with_no_reasons() -> None:
    r = verdict_of(slot())
    assert r.verdict is Verdict.OK and r.reasons == () and r.limit_bytes is None


def test_lost_and_invalidated_slots() -> None:
    lost = verdict_of(slot(wal_status="lost", restart_lsn=None, retained_bytes=None))
    assert lost.verdict is Verdict.LOST and lost.reasons == (
        "wal_status=lost: the WAL it needs was removed",
    )
    idle = verdict_of(slot(wal_status="reserved", invalidation_reason="idle_timeout"))
    assert idle.verdict is Verdict.LOST and idle.reasons == ("invalidated: idle_timeout",)
    conflict = verdict_of(slot(conflicting=True))
    assert conflict.verdict is Verdict.LOST
    gone = missing_report("debezium")
    assert gone.verdict is Verdict.LOST and gone.status is None and not gone.active


def test_unreserved_is_critical_even_below_the_fractions() -> None:
    r = verdict_of(
        slot(wal_status="unreserved", safe_wal_size=-MB),
        Thresholds(warn_fraction=None, critical_fraction=None),
    )
    assert r.verdict is Verdict.CRITICAL and r.time_to_loss == 0.0


def test_byte_thresholds() -> None:
    th = Thresholds(warn_bytes="8MB", critical_bytes="16MB")
    assert verdict_of(slot(retained_bytes=8 * MB - 1), th).verdict is Verdict.OK
    assert verdict_of(slot(retained_bytes=8 * MB), th).verdict is Verdict.WARN
    r = verdict_of(slot(retained_bytes=16 * MB), th)
    assert r.verdict is Verdict.CRITICAL and r.reasons == ("retained 16.0MiB >= critical 16.0MiB",)


def test_fraction_of_max_slot_wal_keep_size_and_of_the_budget() -> None:
    keep = {"max_slot_wal_keep_size": 100 * MB}
    r = verdict_of(slot(retained_bytes=50 * MB), **keep)
    assert r.verdict is Verdict.WARN and r.used_fraction == 0.5 and r.limit_bytes == 100 * MB
    assert "of max_slot_wal_keep_size 100.0MiB >= warn 50%" in r.reasons[0]
    assert verdict_of(slot(retained_bytes=80 * MB), **keep).verdict is Verdict.CRITICAL
    # The smaller limit wins: a disk smaller than max_slot_wal_keep_size fills first.
    budget = Thresholds(wal_budget="60MB")
    r = verdict_of(slot(retained_bytes=50 * MB, safe_wal_size=50 * MB), budget, **keep)
    assert r.limit_bytes == 60 * MB and r.verdict is Verdict.CRITICAL
    assert r.bytes_left == 10 * MB
    assert "wal_budget" in r.reasons[0]
    # Without any limit, fractions cannot apply.
    assert verdict_of(slot(retained_bytes=10**12)).verdict is Verdict.OK


def test_time_to_loss_needs_a_limit_and_growth() -> None:
    th = Thresholds(warn_fraction=None, critical_fraction=None)
    s = slot(safe_wal_size=360 * MB)
    assert verdict_of(s, th, growth=None).time_to_loss is None
    assert verdict_of(s, th, growth=-5.0).time_to_loss is None  # catching up
    assert verdict_of(s, th, growth=0.0).time_to_loss is None
    warn = verdict_of(s, th, growth=360 * MB / (5 * 3600))
    assert warn.time_to_loss == pytest.approx(5 * 3600) and warn.verdict is Verdict.WARN
    crit = verdict_of(s, th, growth=360 * MB / 1800)
    assert crit.verdict is Verdict.CRITICAL and "lost in about 30m" in crit.reasons[0]
    assert verdict_of(slot(safe_wal_size=None), th, growth=1e9).time_to_loss is None


def test_inactivity_from_the_server_and_from_outlast() -> None:
    th = Thresholds(inactive_warn=600, inactive_critical=3600)
    server_side = slot(active=False, inactive_since=NOW - 700, inactive_source="server")
    r = verdict_of(server_side, th)
    assert r.verdict is Verdict.WARN and r.inactive_for == 700
    assert r.reasons == ("no consumer for 12m (>= warn 10m)",)
    tracked = slot(active=False, inactive_since=NOW - 4000, inactive_source="outlast")
    r = verdict_of(tracked, th)
    assert r.verdict is Verdict.CRITICAL and "at least" in r.reasons[0]
    assert verdict_of(slot(active=True, inactive_since=NOW - 10**6), th).inactive_for is None


def test_the_worst_rule_wins_and_every_reason_is_kept() -> None:
    th = Thresholds(warn_bytes="1MB", inactive_warn=60)
    s = slot(
        active=False, inactive_since=NOW - 120, inactive_source="server", wal_status="unreserved"
    )
    r = verdict_of(s, th)
    assert r.verdict is Verdict.CRITICAL and len(r.reasons) == 3


# -- rates ------------------------------------------------------------------------


def test_rate_window_fits_a_slope_and_forgets_old_samples() -> None:
    w = RateWindow(60.0)
    assert w.rate() is None
    for t in range(0, 200, 10):
        w.add(float(t), 5.0 * t + (7 if t % 20 else -7))  # a saw-tooth around 5/s
    assert w.rate() == pytest.approx(5.0, rel=0.05)
    assert w.span <= 60.0
    w.add(190.0, 0.0)  # the same instant again replaces the sample
    assert w.span <= 60.0
    slow = RateWindow(60.0)
    slow.add(0.0, 0.0)
    slow.add(600.0, 600.0)  # two samples are kept even when far apart
    assert slow.rate() == pytest.approx(1.0)
    slow.clear()
    assert slow.rate() is None


# -- offsets ------------------------------------------------------------------------


def facts(st_: SlotStatus | None = None, epoch: str | None = "e1", **server_kw) -> _Facts:
    return _Facts(server(**server_kw), st_ if st_ is not None else slot(), epoch)


def check(stored: int, f: _Facts | None = None, *, epoch=None, sysid=None):
    return decide(
        f or facts(), slot="cdc", stored=Lsn(stored), epoch=epoch, system_identifier=sysid
    )


def test_offset_verdict_order() -> None:
    # The root cause is named first: another cluster, then a restored server, then the slot.
    assert check(2000 * MB, sysid="7").verdict is OffsetVerdict.OTHER_CLUSTER
    assert check(2000 * MB, sysid="42").verdict is OffsetVerdict.FROM_FUTURE
    assert check(995 * MB, _Facts(server(), None, None)).verdict is OffsetVerdict.SLOT_MISSING
    assert check(995 * MB, epoch="e0").verdict is OffsetVerdict.SLOT_RECREATED
    no_epoch = _Facts(server(), slot(), None)
    assert check(995 * MB, no_epoch, epoch="e1").verdict is OffsetVerdict.SLOT_RECREATED
    lost = facts(slot(wal_status="lost", restart_lsn=None))
    assert check(995 * MB, lost, epoch="e1").verdict is OffsetVerdict.SLOT_LOST
    past_restart = check(980 * MB)
    assert past_restart.verdict is OffsetVerdict.CHANGES_SKIPPED
    assert past_restart.skipped_bytes == 15 * MB and "restart_lsn" in past_restart.detail
    past_flush = check(992 * MB)
    assert (
        past_flush.verdict is OffsetVerdict.CHANGES_SKIPPED
        and "confirmed_flush_lsn" in past_flush.detail
    )
    assert check(995 * MB, epoch="e1").verdict is OffsetVerdict.SAFE
    assert check(999 * MB).safe


def test_what_each_strategy_does() -> None:
    skipped = check(992 * MB)
    actions = {
        s: (r.action, r.start_lsn, r.loses_changes, r.silent)
        for s, r in skipped.resolutions().items()
    }
    assert actions == {
        Strategy.NO_VALIDATION: ("resume", Lsn(995 * MB), True, True),
        Strategy.TRUST_OFFSET: ("fail", None, False, False),
        Strategy.TRUST_SLOT: ("adopt_slot", Lsn(995 * MB), True, False),
        Strategy.TRUST_GREATER_LSN: ("adopt_slot", Lsn(995 * MB), True, False),
    }
    with pytest.raises(OffsetNotSafe, match="trust_offset: changes_skipped") as info:
        skipped.resume_point()
    assert info.value.check is skipped
    assert skipped.resume_point("trust_slot") == 995 * MB  # a gap accepted knowingly
    with pytest.raises(OffsetNotSafe, match="silently"):
        skipped.resume_point("no_validation")  # never a silent gap
    ahead = check(999 * MB)
    assert ahead.resolve("trust_offset").action == "advance_slot"
    assert ahead.resolve("trust_slot").action == "resume"
    assert ahead.resume_point() == 999 * MB
    equal = check(995 * MB)
    assert {r.action for r in equal.resolutions().values()} == {"resume"}


# -- outputs -------------------------------------------------------------------------


def report(*slots: SlotStatus, th: Thresholds | None = None, **server_kw) -> Report:
    s = snap(*slots, **server_kw)
    th = th or Thresholds()
    return Report(
        snapshot=s,
        slots=tuple(judge(x, s, th, growth_rate=None) for x in slots) + (missing_report("gone"),),
        thresholds=th,
        wal_rate=1.5,
    )


def test_health_document() -> None:
    code, doc = health_document(None, age=None, stale_after=300, failure=None)
    assert code == 200 and doc["status"] == "warn"
    assert doc["checks"]["replication:check"][0]["output"] == "no slot report yet"
    ok = report(slot())
    code, doc = health_document(ok, age=1.0, stale_after=300, failure=None)
    assert code == 503 and doc["status"] == "fail"  # "gone" is lost
    entries = {e["componentId"]: e for e in doc["checks"]["replication:slots"]}
    assert entries["cdc"]["status"] == "pass" and entries["cdc"]["observedValue"] == 10 * MB
    assert entries["gone"]["output"].startswith("slot does not exist")
    code, doc = health_document(ok, age=900.0, stale_after=300, failure=(NOW, "unavailable: x"))
    assert doc["checks"]["replication:check"][0]["output"].endswith("unavailable: x")
    json.dumps(doc)


def test_prometheus_text_escapes_labels_and_skips_unknown_values() -> None:
    odd = slot(name='we"ird\\slot\n', safe_wal_size=None)
    text = render_prometheus(report(odd))
    assert 'slot="we\\"ird\\\\slot\\n"' in text
    assert "outlast_replication_slot_safe_wal_bytes" not in text
    assert "outlast_replication_slot_time_to_loss_seconds" not in text
    assert text.count("# TYPE outlast_replication_slot_verdict gauge") == 1
    assert "outlast_replication_wal_bytes_per_second 1.5\n" in text
    assert 'outlast_replication_slot_wal_status{slot="cdc"' not in text
    assert {s.name for s in samples(report(slot()))} >= {"outlast_replication_slot_wal_status"}


def test_report_table_and_json() -> None:
    r = report(
        slot(), slot(name="idle", active=False, inactive_since=NOW - 7200, inactive_source="server")
    )
    lines = r.table().splitlines()
    assert lines[0].split() == [
        "slot",
        "type",
        "active",
        "wal_status",
        "retained",
        "limit",
        "used",
        "ttl",
        "inactive",
        "verdict",
    ]
    assert lines[2].split()[-2:] == ["2.0h", "warn"]
    assert lines[3].split()[:4] == ["gone", "-", "-", "missing"]
    assert r.worst is Verdict.LOST and "idle" in r and r["idle"].inactive_for == 7200
    with pytest.raises(KeyError):
        r["nope"]
    doc = json.loads(json.dumps(r.as_dict()))
    assert doc["worst"] == "lost" and doc["slots"][0]["restart_lsn"] == str(Lsn(990 * MB))


def test_log_lines_carry_the_tags_and_structured_fields(caplog) -> None:
    caplog.set_level(logging.INFO, logger="outlast")
    r = report(slot(retained_bytes=60 * MB), th=Thresholds(), max_slot_wal_keep_size=100 * MB)
    warn = r["cdc"]
    log_slot_change(
        SlotChange(monitor="m", slot="cdc", previous=Verdict.OK, current=Verdict.WARN, report=warn)
    )
    ok = dataclasses.replace(warn, verdict=Verdict.OK, reasons=())
    log_slot_change(
        SlotChange(monitor="m", slot="cdc", previous=Verdict.WARN, current=Verdict.OK, report=ok)
    )
    first, second = caplog.records
    assert first.getMessage() == (
        "[SLOT_WARN] slot=cdc retained=60.0MiB limit=100.0MiB used=60% wal_status=reserved"
        " active=yes ttl=- why=retained 60% of max_slot_wal_keep_size 100.0MiB >= warn 50%"
    )
    assert first.levelno == logging.WARNING and first.outlast_event == "slot_warn"
    assert first.retained_bytes == 60 * MB and first.previous == "ok"
    assert second.getMessage() == "[SLOT_OK] slot=cdc was=warn retained=60.0MiB"
