"""The fleet drill's arithmetic, checks and plot, on hand-made recordings (pure logic)."""

from __future__ import annotations

import argparse
import xml.etree.ElementTree as ET
from typing import Any

import pytest

from outlast.drill._fleet_cli import add_fleet_arguments, config_from_args
from outlast.drill._fleet_figures import Answer, Recording, outage, per_second
from outlast.drill._fleet_model import FleetConfig, FleetResult, FleetSide, judge
from outlast.drill._fleet_plot import fleet_svg, nice_ceiling


def _recording() -> Recording:
    rec = Recording(workers=2)
    # The proxy accepted 3 connections by 0.5 s, 10 by 1.5 s, 12 by 2.5 s.
    rec.connects = [(0.2, 3), (0.5, 3), (1.5, 10), (2.5, 12)]
    rec.logins = [(1.1, None), (1.2, "53300"), (1.3, "53300"), (2.1, None)]
    rec.server = [(0.2, 4), (0.7, 6), (1.4, 0), (2.2, 3)]
    rec.server_rejections = [2.4, 2.6, 9.0]  # the last one is past the run
    rec.answers = [
        Answer(0, 0.0, 0.1, 200),
        Answer(1, 0.0, 0.2, 200),
        Answer(0, 1.0, 1.1, 503),
        Answer(1, 1.0, 1.2, 500),
        Answer(1, 1.0, 1.9, None),
        Answer(0, 1.9, 2.3, 200),  # the first 200 of worker 0 after the return at 2.0
        Answer(1, 2.0, 2.8, 200),  # and of worker 1
        Answer(1, 2.8, 2.9, 200),
    ]
    return rec


def test_per_second_bins_every_observation_into_its_second() -> None:
    seconds = per_second(_recording(), 3.0)
    assert [s.at for s in seconds] == [0, 1, 2]
    assert [s.attempts for s in seconds] == [0, 7, 2]  # differences of the sampled totals
    assert [s.logins for s in seconds] == [0, 3, 1]
    assert [s.injected_53300 for s in seconds] == [0, 2, 0]
    assert [s.server_53300 for s in seconds] == [0, 0, 2]
    assert [s.server_connections for s in seconds] == [6, 0, 3]  # the most held in that second
    assert [(s.ok, s.unavailable, s.errors) for s in seconds] == [(2, 0, 0), (0, 1, 2), (3, 0, 0)]


def test_an_outage_measures_each_workers_first_200_after_the_database_returned() -> None:
    rec = _recording()
    seconds = per_second(rec, 3.0)
    o = outage("down", rec, seconds, start=1.0, returned=2.0, end=3.0)
    assert o.peak_attempts == 7 and o.attempts == 9
    assert o.server_53300 == 2 and o.injected_53300 == 2
    assert o.unavailable == 1 and o.errors == 2
    assert o.first_200 == pytest.approx(0.3) and o.last_200 == pytest.approx(0.8)
    assert o.silent == 0
    # Watched only until 2.5 s, worker 1 never answered 200: no "last" figure.
    short = outage("down", rec, seconds, start=1.0, returned=2.0, end=2.5)
    assert short.silent == 1 and short.last_200 is None and short.first_200 == pytest.approx(0.3)


def _side(enabled: bool, peak: int, refused: float | None, last: float | None) -> FleetSide:
    rec = Recording(workers=2)
    rec.connects = [(0.1, 0), (1.5, peak)]
    rec.server_rejections = [] if refused is None else [refused]
    rec.answers = [Answer(0, 0.0, 2.1, 200)]
    if last is not None:
        rec.answers.append(Answer(1, 0.0, 2.0 + last, 200))
    seconds = per_second(rec, 6.0)
    outages = [outage("down", rec, seconds, start=1.0, returned=2.0, end=6.0)]
    label = "with outlast" if enabled else "without outlast"
    side = FleetSide(label, enabled, 2, seconds, outages, [])
    side.checks = judge(side, FleetConfig(containers=1, workers=2))
    return side


def test_the_checks_fail_on_a_storm_a_53300_or_a_worker_that_does_not_serve_in_time() -> None:
    good = _side(True, peak=12, refused=None, last=0.5)
    assert good.passed, good.checks
    failed = {
        "no_storm": _side(True, peak=13, refused=None, last=0.5),  # 6 per worker allowed
        "no_53300": _side(True, peak=2, refused=1.7, last=0.5),
        "serving": _side(True, peak=2, refused=None, last=2.5),
    }
    for name, side in failed.items():
        assert [c.name for c in side.checks if not c.passed] == [name]
    silent = _side(True, peak=2, refused=None, last=None)
    [check] = [c for c in silent.checks if not c.passed]
    assert check.name == "serving" and "1 worker(s) never served" in check.detail


def test_the_fleet_passes_on_the_side_with_outlast_only() -> None:
    config = FleetConfig(containers=1, workers=2)
    result = FleetResult(
        config,
        [_side(True, 2, None, 0.5), _side(False, 30, 1.5, 0.1)],
        [("down", 1.0, 2.0)],
    )
    assert result.passed
    assert result.as_dict()["sides"][1]["checks"][0]["passed"] is False


def test_the_plot_is_a_standalone_svg_with_both_fleets_and_the_fault_windows() -> None:
    config = FleetConfig(containers=1, workers=2)
    result = FleetResult(
        config,
        [_side(True, 2, None, 0.5), _side(False, 30, 1.5, 0.1)],
        [("down", 1.0, 2.0)],
    )
    svg = fleet_svg(result)
    root = ET.fromstring(svg)  # well-formed XML
    ns = "{http://www.w3.org/2000/svg}"
    lines = root.findall(f"{ns}polyline")
    assert len(lines) == 4  # login attempts and server sessions, per fleet
    colors = {line.get("stroke") for line in lines}
    assert len(colors) == 2
    texts = "".join(t.text or "" for t in root.iter(f"{ns}text"))
    assert "with outlast" in texts and "without outlast" in texts and "down" in texts
    assert f"max_connections {config.server_limit}" in texts
    assert len(root.findall(f"{ns}circle")) == 1  # the plain fleet's one 53300 second


@pytest.mark.parametrize(
    ("value", "expected"), [(0, 1), (1, 1), (1.5, 2), (3, 5), (7, 10), (11, 20), (499, 500)]
)
def test_nice_ceiling(value: float, expected: float) -> None:
    assert nice_ceiling(value) == expected


def test_the_fleet_options_make_a_config_and_refuse_nonsense() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scenarios", default=None)
    parser.add_argument("--duration", type=float, default=6.0)
    parser.add_argument("--budget", type=float, default=3.0)
    parser.add_argument("--only", default=None)
    add_fleet_arguments(parser)
    args = parser.parse_args(["--fleet", "--containers", "3", "--workers", "2"])
    config = config_from_args(args)
    assert (config.size, config.shape, config.sides) == (6, "3x2", ("outlast", "plain"))
    assert config.server_limit < config.size * 20  # below the fleet's total pool
    assert "too_many_connections" in config.scenarios
    with pytest.raises(ValueError, match="unknown scenario"):
        config_from_args(parser.parse_args(["--fleet", "--scenarios", "nope"]))
    with pytest.raises(ValueError, match="between 1 and 64"):
        config_from_args(parser.parse_args(["--fleet", "--workers", "0"]))
    with pytest.raises(ValueError, match="--duration"):
        config_from_args(parser.parse_args(["--fleet", "--duration", "0"]))


@pytest.mark.parametrize("value", [1, 1.5, 2, 3, 4, 5, 6, 8, 10, 20, 30, 50, 60, 80, 150, 400])
def test_the_axis_is_divided_into_round_steps(value: float) -> None:
    from outlast.drill._fleet_plot import _ticks

    n = _ticks(value)
    assert 3 <= n <= 6
    labels = [value * k / n for k in range(n + 1)]
    # Every label is printed short (e.g. 12.5, 15, 20), never 13.333.
    assert all(len(f"{v:g}") <= 4 for v in labels), labels


def test_a_saved_run_reads_back_and_plots_the_same() -> None:
    import json

    config = FleetConfig(containers=1, workers=2)
    result = FleetResult(
        config,
        [_side(True, 2, None, 0.5), _side(False, 30, 1.5, 0.1)],
        [("down", 1.0, 2.0)],
        12.5,
    )
    again = FleetResult.from_dict(json.loads(json.dumps(result.as_dict())))
    assert again.as_dict() == result.as_dict()
    assert fleet_svg(again) == fleet_svg(result)


def test_the_command_refuses_a_bad_shape_before_starting_anything(capsys: Any) -> None:
    from outlast.cli import main

    assert main(["demo", "--fleet", "--workers", "0"]) == 2
    assert "between 1 and 64" in capsys.readouterr().err
    assert main(["demo", "--fleet", "--scenarios", "down,nope"]) == 2
    assert "unknown scenario 'nope'" in capsys.readouterr().err
