"""``Index``: one index directory with its catalog, vector indexes and model — the embedded API.

The facade is :mod:`.facade`; its languages (:mod:`.languages`) and its conversations with
the search — sessions, explained queries, near-duplicates (:mod:`.conversations`) — are
mixed into it from modules of their own.
"""

from __future__ import annotations

from .common import TARGETS, QueryEncoder
from .facade import Index

__all__ = ["TARGETS", "Index", "QueryEncoder"]
