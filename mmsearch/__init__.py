"""mmsearch: search photos and texts by meaning with OpenCLIP and FAISS.

The embedded API::

    import mmsearch

    with mmsearch.Index.open("./my-index", model="ViT-B-32") as index:
        index.add_images(["./photos"])
        index.add_texts(["a red car", "a dog on a beach"])
        for hit in index.search("a red car", k=5):
            print(f"{hit.score:.3f}", hit.path)
"""

from .errors import (
    DependencyError,
    IndexCorruptError,
    IndexNotFoundError,
    InputError,
    MMSearchError,
    ModelError,
    ModelMismatchError,
    QueryError,
    WeightsUnavailableError,
)
from .index import Index
from .results import Hit, IndexInfo, RunSummary, Skipped

__version__ = "0.1.0"

__all__ = [
    "DependencyError",
    "Hit",
    "Index",
    "IndexCorruptError",
    "IndexInfo",
    "IndexNotFoundError",
    "InputError",
    "MMSearchError",
    "ModelError",
    "ModelMismatchError",
    "QueryError",
    "RunSummary",
    "Skipped",
    "WeightsUnavailableError",
    "__version__",
]
