"""The framework-neutral half of the web integrations, and the health documents.

``outlast.flask``, ``outlast.starlette`` and ``outlast.django`` are thin shells
around `base.WebBase`; `options` declares their settings once, `mapping` turns
exceptions into 503/500 answers, and `health` builds ``application/health+json``.
"""
