"""mmsearch: search photos and texts by meaning with OpenCLIP and FAISS.

The embedded API::

    import mmsearch

    with mmsearch.Index.open("./my-index", model="ViT-B-32") as index:
        index.add_images(["./photos"])
        index.add_texts(["a red car", "a dog on a beach"])
        for hit in index.search("a red car", k=5):
            print(f"{hit.score:.3f}", hit.path)
"""

from typing import TYPE_CHECKING, Any

from .errors import (
    DependencyError,
    IndexCorruptError,
    IndexNotFoundError,
    InputError,
    MMSearchError,
    ModelError,
    ModelMismatchError,
    QueryError,
    SessionNotFoundError,
    WeightsUnavailableError,
)
from .query import Filters, Query, Term
from .results import Hit, IndexInfo, RunSummary, Skipped

if TYPE_CHECKING:
    from .index import Index
    from .refine import RocchioWeights, Session

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Index pulls in the catalog (SQLAlchemy), faiss and Pillow: loaded on first use so that
    # `import mmsearch` (and the CLI's start-up) stays cheap.
    if name == "Index":
        from .index import Index

        return Index
    if name in ("Session", "RocchioWeights"):  # the catalog (SQLAlchemy): lazily, as Index
        from . import refine

        return getattr(refine, name)
    raise AttributeError(f"module 'mmsearch' has no attribute {name!r}")


__all__ = [
    "DependencyError",
    "Filters",
    "Hit",
    "Index",
    "IndexCorruptError",
    "IndexInfo",
    "IndexNotFoundError",
    "InputError",
    "MMSearchError",
    "ModelError",
    "ModelMismatchError",
    "Query",
    "QueryError",
    "RocchioWeights",
    "RunSummary",
    "Session",
    "SessionNotFoundError",
    "Skipped",
    "Term",
    "WeightsUnavailableError",
    "__version__",
]
