"""Run by ``python -m django test suite_app`` (see tests/web/test_django_suite.py)."""

from __future__ import annotations

import unittest
from typing import Any

from django.db import connection, transaction
from django.test import TestCase, TransactionTestCase

import outlast
from outlast.django import runtime

from .models import Note
from .views import HOOKS

ON_POSTGRESQL = connection.vendor == "postgresql"


def add(conn: Any, text: str) -> bool:
    Note.objects.create(text=text)
    return bool(conn.in_atomic_block)


@unittest.skipUnless(ON_POSTGRESQL, "PostgreSQL")
class InsideTestCase(TestCase):
    """Every TestCase test runs inside atomic(): runtime().transaction uses a savepoint."""

    def test_runtime_transaction_runs_in_the_enclosing_transaction(self) -> None:
        self.assertTrue(runtime().transaction(connection, add, "one"))
        self.assertEqual(Note.objects.filter(text="one").count(), 1)

    def test_an_error_in_fn_rolls_back_only_its_savepoint(self) -> None:
        Note.objects.create(text="kept")

        def fail(conn: Any) -> None:
            Note.objects.create(text="dropped")
            raise ValueError("boom")

        with self.assertRaises(ValueError):
            runtime().transaction(connection, fail)
        self.assertEqual(list(Note.objects.values_list("text", flat=True)), ["kept"])

    def test_inside_an_atomic_block_of_your_own(self) -> None:
        with transaction.atomic():
            self.assertTrue(runtime().transaction(connection, add, "nested"))
        self.assertEqual(Note.objects.filter(text="nested").count(), 1)

    def test_guard_transaction_inside_atomic_says_what_to_use(self) -> None:
        with self.assertRaisesRegex(outlast.ConfigurationError, r"runtime\(\)\.transaction"):
            runtime().guard.transaction(connection, add, "never")

    def test_a_view_writing_through_runtime_transaction_answers_201(self) -> None:
        response = self.client.post("/notes", {"text": "via the test client"})
        self.assertEqual(response.status_code, 201, response.content)


@unittest.skipUnless(ON_POSTGRESQL, "PostgreSQL")
class OutsideAtomic(TransactionTestCase):
    """Real COMMITs: outlast's own transaction, and ATOMIC_REQUESTS through the middleware."""

    def test_runtime_transaction_commits_a_transaction_of_its_own(self) -> None:
        self.assertFalse(connection.in_atomic_block)
        self.assertFalse(runtime().transaction(connection, add, "own"))
        self.assertTrue(connection.get_autocommit())
        self.assertEqual(Note.objects.filter(text="own").count(), 1)

    def test_atomic_requests_with_runtime_transaction_commits_and_runs_hooks(self) -> None:
        HOOKS.clear()
        response = self.client.post("/notes", {"text": "request"})
        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual(Note.objects.filter(text="request").count(), 1)
        self.assertEqual(HOOKS, ["request"])

    def test_an_ordinary_save_under_atomic_requests(self) -> None:
        HOOKS.clear()
        response = self.client.post("/plain", {"text": "plain"})
        self.assertEqual(response.status_code, 201, response.content)
        self.assertEqual(Note.objects.filter(text="plain").count(), 1)
        self.assertEqual(HOOKS, ["plain"])


@unittest.skipIf(ON_POSTGRESQL, "SQLite")
class OnSqlite(TestCase):
    def test_runtime_transaction_fails_at_once_and_says_why(self) -> None:
        with self.assertRaisesRegex(outlast.ConfigurationError, "needs PostgreSQL.*sqlite"):
            runtime().transaction(connection, add, "x")
        self.assertEqual(Note.objects.count(), 0)

    def test_the_middleware_leaves_ordinary_views_alone(self) -> None:
        response = self.client.post("/plain", {"text": "on sqlite"})
        self.assertEqual(response.status_code, 201, response.content)
