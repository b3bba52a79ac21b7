"""`odebench study`: CM vs Direct CM over a grid of training budgets, seeds and training choices.

plan.py     the grid, each point's full identity and key, the study's fixed settings
runner.py   train (the one distillation loop) and evaluate (`odebench.run`) every point, resumably
store.py    study.json: every finished point's identity and metrics
stats.py    across-seed statistics: t-intervals per cell, CM - Direct CM differences, pairs-bootstrap agreement
"""
