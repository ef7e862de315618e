from django.contrib.postgres.operations import AddIndexConcurrently
from django.db import migrations, models

from leads.migration_log import record


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY cannot run in a transaction
    dependencies = [("leads", "0003_call")]
    operations = [
        AddIndexConcurrently("call", models.Index(fields=["sid"], name="calls_sid")),
        record("leads.0004_calls_sid"),
    ]
