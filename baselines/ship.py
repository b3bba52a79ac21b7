"""Ship a trained student into the package: `python -m baselines.ship SIDECAR odebench/assets/students/NAME`."""
from __future__ import annotations

import sys
from pathlib import Path

from baselines.train import ship_student

if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m baselines.ship SIDECAR STEM")
    print(ship_student(Path(sys.argv[1]), Path(sys.argv[2])))
