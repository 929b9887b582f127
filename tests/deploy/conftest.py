"""The deployment tests import their helpers by module name (deploy_helpers.py, beside this file)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
