"""Pure pieces of the Django integration: route labels, EXEMPT rules, what counts as a
read, and `harden_database` (real ``dj-database-url`` settings)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import outlast

pytest.importorskip("django")
dj_database_url = pytest.importorskip("dj_database_url")

from outlast.django import harden_database  # noqa: E402
from outlast.django._commit import _reads_only  # noqa: E402
from outlast.django._routes import ExemptRules, route_label  # noqa: E402


@pytest.mark.parametrize(
    ("route", "label"),
    [
        ("api/leads/<int:pk>/", "api/leads/<int:pk>/"),  # path(): as written
        ("api/^leads/$", "api/leads/"),  # REST framework's router
        ("api/^leads/(?P<pk>[^/.]+)/$", "api/leads/<pk>/"),
        ("api/^leads/(?P<pk>[^/.]+)\\.(?P<format>[a-z0-9]+)/?$", "api/leads/<pk>.<format>/"),
        ("api/^$", "api/"),
        ("^articles/(?P<year>[0-9]{4})/$", "articles/<year>/"),
        ("^shop/(?:items|goods)/(\\d+)/$", "shop/items|goods/<arg>/"),
        ("", None),
    ],
)
def test_route_labels_are_route_patterns_not_regexes(route: str, label: str | None) -> None:
    assert route_label(route) == label


def _match(route: str = "", view_name: str = "") -> SimpleNamespace:
    return SimpleNamespace(route=route, view_name=view_name)


def test_exempt_root_exempts_the_root_and_nothing_else() -> None:
    rules = ExemptRules(["/"])
    assert rules.matches("/", None)
    assert not rules.matches("/api/leads/", None)
    assert not rules.matches("/anything", None)


def test_exempt_exact_paths_ignore_a_trailing_slash_only() -> None:
    rules = ExemptRules(["/api/ping"])
    assert rules.matches("/api/ping", None) and rules.matches("/api/ping/", None)
    assert not rules.matches("/api/ping/deeper", None)
    assert not rules.matches("/api/pingpong", None)


def test_exempt_path_patterns() -> None:
    rules = ExemptRules(["/static/**", "/api/*/ping"])
    assert rules.matches("/static/css/site.css", None)
    assert rules.matches("/static/", None)
    assert rules.matches("/api/v2/ping", None) and rules.matches("/api/v2/ping/", None)
    assert not rules.matches("/api/v2/x/ping", None)
    assert not rules.matches("/api/leads/", None)


def test_exempt_route_patterns_and_url_names() -> None:
    rules = ExemptRules(["api-root", "shop:ping", "api/leads/<pk>/stats/"])
    assert rules.matches("/api/", _match("api/^$", "api-root"))
    assert rules.matches("/shop/ping/", _match("shop/ping/", "shop:ping"))
    assert rules.matches("/api/leads/7/stats/", _match("api/^leads/(?P<pk>[^/.]+)/stats/$"))
    assert not rules.matches("/api/leads/7/", _match("api/^leads/(?P<pk>[^/.]+)/$", "lead-detail"))
    assert rules.names == {"api-root", "shop:ping", "api/leads/<pk>/stats/"}


@pytest.mark.parametrize("bad", [[""], [3], ["  "], [None]])
def test_exempt_rejects_what_is_not_a_path_route_or_name(bad: list[object]) -> None:
    with pytest.raises(outlast.ConfigurationError, match="EXEMPT"):
        ExemptRules(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sql", "read"),
    [
        ('SELECT "drf_leads"."id" FROM "drf_leads"', True),
        ("  /* comment */ select 1", True),
        ("(SELECT 1) UNION (SELECT 2)", True),
        ("WITH x AS (SELECT 1) SELECT * FROM x", True),
        ("WITH x AS (INSERT INTO t VALUES (1) RETURNING id) SELECT * FROM x", False),
        ('INSERT INTO "drf_leads" ("name") VALUES (%s) RETURNING "id"', False),
        ("UPDATE t SET x = 1", False),
        ("DELETE FROM t", False),
        ("EXPLAIN SELECT 1", True),
        ("EXPLAIN ANALYZE INSERT INTO t VALUES (1)", False),
        ("SET statement_timeout = 1000", True),
        ("COPY t FROM STDIN", False),
        ("", False),
    ],
)
def test_what_counts_as_a_read(sql: str, read: bool) -> None:
    assert _reads_only(sql) is read


def test_harden_database_keeps_what_dj_database_url_set() -> None:
    db = dj_database_url.parse("postgres://app:s%40cret@db.example.com:5432/shop?sslmode=require")
    out = harden_database(db)
    assert out is db
    options = db["OPTIONS"]
    assert options["sslmode"] == "require"  # was overwritten by the old README advice
    assert options["connect_timeout"] == "3" and options["keepalives"] == "1"
    assert options["tcp_user_timeout"] == "10000"
    assert "statement_timeout=30000" in options["options"]
    assert db["PASSWORD"] == "s@cret" and db["NAME"] == "shop"


def test_harden_database_lets_your_own_values_win() -> None:
    db = dj_database_url.parse("postgres://app@db/shop")
    db["OPTIONS"] = {"connect_timeout": 7, "options": "-c statement_timeout=5s -c search_path=app"}
    options = harden_database(db)["OPTIONS"]
    assert options["connect_timeout"] == 7
    assert options["options"].startswith("-c statement_timeout=5s -c search_path=app")
    assert options["options"].count("statement_timeout") == 1
    assert "idle_in_transaction_session_timeout=60000" in options["options"]


def test_harden_database_for_a_pooler_sends_no_startup_options() -> None:
    db = dj_database_url.parse("postgres://app@ep-cool-1-pooler.eu-central-1.aws.neon.tech/shop")
    options = harden_database(db)["OPTIONS"]
    assert "options" not in options
    db = dj_database_url.parse("postgres://app@bouncer:6432/shop")
    db["OPTIONS"] = {"options": "-c search_path=app"}
    with pytest.raises(outlast.ConfigurationError, match="pooler"):
        harden_database(db, preset="pgbouncer")


def test_harden_database_refuses_other_engines() -> None:
    with pytest.raises(outlast.ConfigurationError, match="PostgreSQL"):
        harden_database({"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"})
