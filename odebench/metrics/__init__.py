"""Metrics: ODE error and distribution/quality metrics. Metrics know nothing of teachers."""
