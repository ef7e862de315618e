from django.db import migrations, models

from leads.migration_log import record


class Migration(migrations.Migration):
    dependencies = [("leads", "0001_initial")]
    operations = [
        migrations.AddField(model_name="lead", name="email", field=models.TextField(null=True)),
        migrations.RunSQL(
            "INSERT INTO leads_lead (name, email) VALUES ('seed', 'seed@example.com')",
            migrations.RunSQL.noop,
        ),
        record("leads.0002_lead_email"),
    ]
