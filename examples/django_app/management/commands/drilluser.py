"""``python -m django drilluser NAME``: make sure a user exists, print its API token.

The password comes from ``DRILL_PASSWORD`` when it is set (for the drill's
login step, ``POST /api/auth/token/``); otherwise the user has none.
"""

from __future__ import annotations

import os
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from rest_framework.authtoken.models import Token


class Command(BaseCommand):
    help = "Create (or reuse) a user and print its API token."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("username")

    def handle(self, *args: Any, **options: Any) -> None:
        user, _ = get_user_model().objects.get_or_create(username=options["username"])
        password = os.environ.get("DRILL_PASSWORD")
        if password:
            user.set_password(password)
        else:
            user.set_unusable_password()
        user.save()
        token, _ = Token.objects.get_or_create(user=user)
        self.stdout.write(token.key)
