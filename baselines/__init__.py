"""Reference trainers (CM and Direct CM distillation); they build on odebench rather than copy it.

The training loop lands with the trainers issue; until then this package holds no code.
"""
