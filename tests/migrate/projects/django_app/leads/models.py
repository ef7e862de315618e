from django.db import models


class Lead(models.Model):
    name = models.TextField()
    email = models.TextField(null=True)


class Call(models.Model):
    lead = models.ForeignKey(Lead, on_delete=models.CASCADE)
    sid = models.TextField()

    class Meta:
        indexes = [models.Index(fields=["sid"], name="calls_sid")]
