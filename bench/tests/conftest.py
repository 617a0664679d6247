"""The bench scripts import each other by module name (``from records import summarize``), as
``python bench/run.py`` runs them; the tests put ``bench/`` on the path the same way."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
