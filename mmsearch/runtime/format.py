"""The layout of an exported runtime directory, shared by the exporter and the runtime.

A directory holds ``runtime.json`` (this module's :data:`RUNTIME_FILE`), the two towers
(``text.onnx``: int64 token ids (N, context_length) → unit float32 (N, dim);
``image.onnx``: float32 (N, 3, H, W) → unit float32 (N, dim)), their weights
(``text.onnx.data``, ``image.onnx.data``, memory-mapped by onnxruntime) and the tokenizer's
files. runtime.json records every file's size and, per tower, the embedding of a fixed
self-test input, checked when the tower is loaded.
"""

from __future__ import annotations

#: Bumped when a reader of an older version could misread a newer directory.
FORMAT_VERSION = 1
#: Marks the JSON as ours (a foreign ``runtime.json`` is refused).
FORMAT_NAME = "mmsearch-query-runtime"
RUNTIME_FILE = "runtime.json"
TEXT_FILE = "text.onnx"
IMAGE_FILE = "image.onnx"
TEXT_INPUT = "token_ids"
IMAGE_INPUT = "pixel_values"
OUTPUT = "unit_embedding"
#: Tokenizer kinds: open_clip's SimpleTokenizer (CLIP BPE), and a Hugging Face
#: ``tokenizer.json`` run by the ``tokenizers`` library (multilingual and Chinese models).
TOKENIZER_CLIP_BPE = "clip-bpe"
TOKENIZER_HF = "hf-tokenizers"
HF_TOKENIZER_FILE = "tokenizer.json"
#: ``towers.text.trim``: true — CLIP's causal tower, cut after the end token (the largest
#: id); "pad" — a tower that ignores padding, cut after the last non-pad token. (Only
#: hf-tokenizers runtimes, which older readers refuse, carry "pad".)
TRIM_PAD = "pad"
#: Least cosine between an exported tower's embedding and torch's on every probe.
MIN_COSINE = 0.9999
#: Ready-to-use BPE tables (``tokenizer.files.tables``; see ``tokenizer.write_tables``).
TOKENIZER_TABLES_FILE = "bpe_tables.npz"
#: A tower whose ``optimized`` is this was optimised by onnxruntime at export (graph
#: optimisation level "extended", hardware-independent): sessions load it as it is.
OPTIMIZED_EXTENDED = "extended"
#: What the runtime last verified: each tower's files (size, mtime, ctime, inode) and
#: ``runtime.json``'s digest when its self-test passed. A tower whose files still match
#: is not self-tested again; any change to them (a new export, a copy, a rewrite) is.
VERIFIED_FILE = "verified.json"
