"""Defaults shared by the client library and its command line (no imports: the CLI loads it eagerly)."""

from __future__ import annotations

__all__ = ["DEFAULT_MARGIN", "DEFAULT_PER_CLASS", "DEFAULT_FLAGGED"]

#: A cell whose two most probable SVM classes differ by less than this in probability is flagged.
DEFAULT_MARGIN = 0.05
#: Cells shown in each class's gallery of a slide report, least confident first.
DEFAULT_PER_CLASS = 12
#: Cells flagged for review shown in their own gallery of a slide report, least confident first.
DEFAULT_FLAGGED = 36
