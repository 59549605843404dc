"""Embeddings out and in: clip-retrieval's layout and one Parquet file.

Export (:func:`export_clip_layout`, :func:`export_parquet`) writes what the catalog holds;
import (:func:`read_export`) reads it back as rows the catalog stores without encoding.
The :class:`~mmsearch.Index` facade calls these (``Index.export_embeddings``,
``Index.import_embeddings``); nothing here opens an index.

clip-retrieval's layout (``clip-retrieval inference`` writes it; LAION publishes it)::

    OUT/img_emb/img_emb_0.npy          float16 (N, dim): the images, in metadata order
    OUT/text_emb/text_emb_0.npy        float16 (M, dim): the texts
    OUT/metadata/metadata_0.parquet    N rows: image_path, url, caption, id, …
    OUT/metadata/text_metadata_0.parquet   M rows of the texts (mmsearch's own addition:
                                       its texts are items of their own, not captions)
    OUT/mmsearch_model.json            the model record (identity, dim): import checks it
"""

from .layout import (
    MODEL_FILE,
    ExportReport,
    ImportRows,
    export_clip_layout,
    export_parquet,
    read_export,
)

__all__ = [
    "MODEL_FILE",
    "ExportReport",
    "ImportRows",
    "export_clip_layout",
    "export_parquet",
    "read_export",
]
