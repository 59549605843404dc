"""The faiss module, imported once for the ANN package (the only place faiss is used)."""

from __future__ import annotations

from typing import Any

from mmsearch.errors import DependencyError

try:
    import faiss
except ImportError:  # pragma: no cover - exercised only without the extra installed
    faiss = None


def require_faiss() -> Any:
    """The faiss module, or a clear error naming the extra to install."""
    if faiss is None:
        raise DependencyError(
            "faiss", "install mmsearch[cpu] (faiss-cpu) or mmsearch[gpu] (faiss-gpu)"
        )
    return faiss
