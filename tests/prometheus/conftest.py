"""The Prometheus tier drives the real agent in the lab with the end-to-end tests' helpers."""

from __future__ import annotations

import sys
from pathlib import Path

# tests/e2e has no package: its helpers (e2e_agentlab, e2e_observe) are imported by module name.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
