"""Pure pieces of the drill's real-API support: headers, templates, ids, pages, tokens,
and whether a scenario was exercised."""

from __future__ import annotations

import sys

import pytest

from outlast.drill._api import Auth, AuthError, JsonTemplate, dig, next_page, parse_header
from outlast.drill._ledger import Ledger
from outlast.drill._scenarios import FaultWindow, exercised

BASE = "http://127.0.0.1:8000"


def test_headers_parse_and_errors_never_repeat_the_value() -> None:
    assert parse_header("Authorization: Bearer a:b c") == ("Authorization", "Bearer a:b c")
    assert parse_header("X-Api-Key:k") == ("X-Api-Key", "k")
    for bad in ("Bearer hunter2", "Bad Name: hunter2", ": hunter2", "X: a\nhunter2"):
        with pytest.raises(ValueError) as caught:
            parse_header(bad)
        assert "hunter2" not in str(caught.value)


def test_write_body_templates_put_the_id_in_every_string_and_need_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    t = JsonTemplate.parse('{"name": "drill {id}", "tags": ["{id}", 3], "n": {"e": "{id}@x"}}')
    assert t.render("d-1") == {"name": "drill d-1", "tags": ["d-1", 3], "n": {"e": "d-1@x"}}
    path = tmp_path / "body.json"
    path.write_text('{"email": "{id}@example.com"}')
    assert JsonTemplate.parse(f"@{path}").render("x") == {"email": "x@example.com"}
    with pytest.raises(ValueError, match="{id}"):
        JsonTemplate.parse('{"name": "fixed"}')
    with pytest.raises(ValueError, match="not JSON"):
        JsonTemplate.parse("{name: 1}")


def test_dig_follows_dotted_paths() -> None:
    body = {"data": {"id": 7, "items": [{"id": "a"}]}}
    assert dig(body, "data.id") == 7
    assert dig(body, "data.items.0.id") == "a"
    assert dig(body, "data.nope") is None and dig(body, "data.items.5.id") is None


def test_next_page_from_json_links_and_headers_on_the_same_origin_only() -> None:
    drf = {"count": 99, "next": f"{BASE}/api/leads/?page=2", "results": []}
    assert next_page(BASE, "/api/leads/", {}, drf) == f"{BASE}/api/leads/?page=2"
    assert next_page(BASE, "/api/leads/?page=9", {}, {"next": None, "results": []}) is None
    jsonapi = {"data": [], "links": {"next": "/api/leads?page[number]=3"}}
    assert next_page(BASE, "/api/leads", {}, jsonapi) == f"{BASE}/api/leads?page[number]=3"
    link = {"link": '<https://x/prev>; rel="prev", </api/leads/?cursor=abc>; rel="next"'}
    assert next_page(BASE, "/api/leads/", link, []) == f"{BASE}/api/leads/?cursor=abc"
    assert next_page(BASE, "/api/leads/", {}, []) is None
    with pytest.raises(ValueError, match="another host"):
        next_page(BASE, "/api/leads/", {}, {"next": "http://evil.example/api/leads/?page=2"})
    with pytest.raises(ValueError, match="another host"):
        next_page(BASE, "/api/leads/", {}, {"next": "http://127.0.0.1:9999/?page=2"})


def test_a_token_command_failure_says_so_without_its_output() -> None:
    ok = Auth.from_command_line(f"{sys.executable} -c \"print('x'); print('tok')\"")
    assert ok.run_command() == "tok"
    assert ok.header_for("tok") == ("Authorization", "Bearer tok")
    leaky = f"{sys.executable} -c \"import sys; print('hunter2'); sys.exit(3)\""
    with pytest.raises(AuthError) as caught:
        Auth.from_command_line(leaky).run_command()
    assert str(caught.value) == "the token command exited with status 3"
    with pytest.raises(AuthError, match="not found"):
        Auth.from_command_line("no-such-command-for-outlast").run_command()


def test_login_answers_give_a_token_or_a_clear_error() -> None:
    auth = Auth(login_path="/login")
    assert auth.token_from(200, {"token": "t"}) == "t"
    assert auth.token_from(200, {"access": "a", "refresh": "r"}) == "a"
    assert Auth(login_path="/l", login_token="data.jwt").token_from(200, {"data": {"jwt": "j"}})
    with pytest.raises(AuthError, match="answered 401"):
        auth.token_from(401, {"token": "t"})
    with pytest.raises(AuthError, match="no token"):
        auth.token_from(200, {"user": "u"})
    with pytest.raises(ValueError, match="{token}"):
        Auth(login_path="/l", header="Authorization: Bearer")


def _w(fault: str, hits: int | None) -> FaultWindow:
    return FaultWindow("s", fault, 0.0, 1.0, fault_id=f"{fault}-1", hits=hits)


def test_a_scenario_is_exercised_when_any_fault_acted() -> None:
    assert exercised([_w("cut_after", 0)]) is False
    assert exercised([_w("reject_login", 0), _w("terminate", 0)]) is False
    assert exercised([_w("reject_login", 0), _w("terminate", 2)]) is True
    assert exercised([_w("down", 0)]) is None  # refused connections are not seen
    assert exercised([_w("cut_after", None)]) is None  # an injector that cannot tell
    assert exercised([FaultWindow("s", "restart", 0.0, 1.0)]) is True
    assert exercised([]) is None


def test_ledger_reports_writes_it_could_not_look_up() -> None:
    ledger = Ledger("t")
    a, b, c = ledger.new_id(), ledger.new_id(), ledger.new_id()
    ledger.record(a, "ok", service_id="1")
    ledger.record(b, "503", problem=True)  # failed: no id from the service
    ledger.record(c, "timeout")  # unknown: no id either
    result = ledger.check({a: 1}, checked={a}, listed=False)
    assert (result.acknowledged, result.failed, result.unknown) == (1, 1, 1)
    assert result.unchecked == 2 and result.passed and not result.unexpected
    lost = ledger.check({}, checked={a}, listed=False)
    assert lost.lost == [a] and not lost.passed
