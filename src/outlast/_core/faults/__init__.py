"""The fault model: any driver error -> one `Fault`, and outlast's own exceptions.

`fault` defines the value, `classify` decides it (SQLSTATE first, exception
class second, message text last; `sqlstate` and `messages` hold the tables),
`errors` draws outlast's exception tree, and `redact` keeps passwords and SQL
parameters out of every message.
"""
