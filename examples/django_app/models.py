from __future__ import annotations

from django.db import models


class Lead(models.Model):
    id = models.TextField(primary_key=True)
    name = models.TextField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "django_app"
        db_table = "leads"
