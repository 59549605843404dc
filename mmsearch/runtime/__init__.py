"""The query runtime: a model's text and image towers as ONNX, run by onnxruntime.

Encodes a query without torch or open_clip: :mod:`.tokenizer` (CLIP BPE) or
:mod:`.hf_tokenizer` (a ``tokenizer.json``: multilingual and Chinese models), :mod:`.preprocess`
(Pillow + numpy image transform) and :mod:`.towers` (:class:`QueryRuntime`, onnxruntime
sessions). ``mmsearch.export`` writes the directories this package reads.
"""

from .format import FORMAT_VERSION, RUNTIME_FILE
from .towers import QueryRuntime

__all__ = ["FORMAT_VERSION", "RUNTIME_FILE", "QueryRuntime"]
