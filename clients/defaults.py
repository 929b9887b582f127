"""Defaults shared by the client library and its command line (the CLI loads it eagerly, so it
imports nothing but :mod:`smr.core.contract`, which is pure Python)."""

from __future__ import annotations

from smr.core.contract import DEFAULT_REVIEW_MARGIN

__all__ = ["DEFAULT_MARGIN", "DEFAULT_PER_CLASS", "DEFAULT_FLAGGED"]

#: A cell whose two most probable SVM classes differ by less than this in probability is flagged
#: (the served review margin's default, so that the served flags apply as they are).
DEFAULT_MARGIN = DEFAULT_REVIEW_MARGIN
#: Cells shown in each class's gallery of a slide report, least confident first.
DEFAULT_PER_CLASS = 12
#: Cells flagged for review shown in their own gallery of a slide report, least confident first.
DEFAULT_FLAGGED = 36
