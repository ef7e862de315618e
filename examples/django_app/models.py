from __future__ import annotations

from django.db import models


class Lead(models.Model):
    """A sales lead. Nothing is unique but the key: a write applied twice shows as two rows."""

    name = models.CharField(max_length=200)
    email = models.EmailField()
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        app_label = "django_app"
        db_table = "drf_leads"
        ordering = ["id"]

    def __str__(self) -> str:
        return self.name
