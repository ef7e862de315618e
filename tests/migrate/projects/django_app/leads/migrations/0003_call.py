from django.db import migrations, models

from leads.migration_log import record


class Migration(migrations.Migration):
    dependencies = [("leads", "0002_lead_email")]
    operations = [
        migrations.CreateModel(
            name="Call",
            fields=[
                ("id", models.BigAutoField(primary_key=True, serialize=False)),
                ("sid", models.TextField()),
                (
                    "lead",
                    models.ForeignKey(on_delete=models.deletion.CASCADE, to="leads.lead"),
                ),
            ],
        ),
        record("leads.0003_call"),
    ]
