"""An index's extra text encoders (one per taught language) and which one a query uses.

No torch here: the registry is JSON kept in the catalog's ``meta`` table (key
:data:`META_KEY`; no schema change), and each encoder's files live under
``INDEX_DIR/text-encoders/NAME/`` (the trained text-tower weights and the ONNX export the
query runtime reads). The index's own text tower is always there as :data:`MAIN`.

Which encoder a text query uses (:func:`choose`): the one named, else the one registered
for the language given, else the language detected from the text's script (a small
script-based detector, :func:`detect_language`: Han characters → ``zh``, kana → ``ja``,
Hangul → ``ko``, …; Latin-script text is not told apart and stays with the main tower),
else the main tower. An encoder trained for another model of the index (the index was
re-embedded since) is stale: never picked by language, refused by name.
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import QueryError

#: Catalog meta key holding the registry (JSON object: name → entry).
META_KEY = "text_encoders"
#: Folder of the index directory holding one sub-folder per extra text encoder.
DIR_NAME = "text-encoders"
#: Name of the index model's own text tower.
MAIN = "main"
#: Names: short, file-system safe.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")

# Unicode script of a character → language code. unicodedata has no script property, so
# character names stand in for it: "CJK UNIFIED IDEOGRAPH-4E00", "HIRAGANA LETTER A" …
_SCRIPT_WORDS: tuple[tuple[str, str], ...] = (
    ("HIRAGANA", "ja"),
    ("KATAKANA", "ja"),
    ("HANGUL", "ko"),
    ("CJK", "zh"),
    ("CYRILLIC", "ru"),
    ("ARABIC", "ar"),
    ("HEBREW", "he"),
    ("GREEK", "el"),
    ("THAI", "th"),
    ("DEVANAGARI", "hi"),
)


def _script_language(ch: str) -> str | None:
    name = unicodedata.name(ch, "")
    for word, lang in _SCRIPT_WORDS:
        if name.startswith(word):
            return lang
    return None


def detect_language(text: str) -> str | None:
    """The language a text's script gives away, or None (Latin script, digits, nothing).

    Script-based only: any kana makes Japanese (Japanese mixes kana with Han characters),
    else the most frequent non-Latin script decides (Han → ``zh``, Hangul → ``ko``,
    Cyrillic → ``ru``, Arabic → ``ar``, Hebrew → ``he``, Greek → ``el``, Thai → ``th``,
    Devanagari → ``hi``). Languages sharing a script (English/French, Chinese/Cantonese)
    are not told apart.
    """
    counts: dict[str, int] = {}
    for ch in text:
        if ch.isascii():
            continue
        lang = _script_language(ch)
        if lang is not None:
            counts[lang] = counts.get(lang, 0) + 1
    if not counts:
        return None
    if "ja" in counts:
        return "ja"
    return max(counts, key=lambda lang: counts[lang])


@dataclass
class TextEncoderInfo:
    """One extra text encoder of an index.

    Attributes:
        name: its name (``--text-encoder NAME``).
        lang: the language it was trained for (``--lang``), e.g. ``zh``.
        model: identity of the index model whose frozen image tower it was trained against.
        identity: identity of its exported query runtime (the index model plus these
            text-tower weights).
        context_length: token positions of its text tower.
        heldout: recall on the held-out pairs (``t2i_r1`` … ``i2t_r10``, ``n``).
        main_heldout: the same recall through the index model's own text tower (what the
            language got before it was taught).
        train_pairs: pairs trained on.
        reused_vectors: images whose stored index vectors were the training targets.
        encoded_images: images not in the index, encoded by the frozen image tower.
        seconds: training time.
        init: the model the text tower started from.
        created: when it was trained (ISO 8601).
        stale: True when the index has another model now (it was re-embedded).
        skipped: rows of the pairs file not used, with reasons (returned, not stored).
    """

    name: str
    lang: str
    model: str
    identity: str
    context_length: int
    heldout: dict[str, float] = field(default_factory=dict)
    main_heldout: dict[str, float] = field(default_factory=dict)
    train_pairs: int = 0
    reused_vectors: int = 0
    encoded_images: int = 0
    seconds: float = 0.0
    init: str = ""
    created: str = ""
    stale: bool = False
    skipped: list[tuple[str, str]] = field(default_factory=list)  # rows not used (not stored)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [list(s) for s in self.skipped]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderInfo:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def check_name(name: str) -> str:
    """``name`` if it can name an extra text encoder (a folder name too), else QueryError."""
    if not NAME_PATTERN.fullmatch(name) or name == MAIN:
        raise QueryError(
            f"bad text encoder name {name!r}: use 1-32 lower-case letters, digits, '-' or '_' "
            f"(not {MAIN!r})"
        )
    return name


def parse_registry(raw: str | None, model: str | None) -> dict[str, TextEncoderInfo]:
    """The registry stored in the catalog; entries of another model marked ``stale``."""
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    out: dict[str, TextEncoderInfo] = {}
    for name, entry in (data if isinstance(data, dict) else {}).items():
        if isinstance(entry, dict):
            info = TextEncoderInfo.from_dict(entry)
            info.stale = info.model != model
            out[name] = info
    return out


def dump_registry(entries: dict[str, TextEncoderInfo]) -> str:
    """The registry as stored (``stale`` is derived, never stored)."""
    data = {}
    for name, info in sorted(entries.items()):
        entry = info.to_dict()
        entry.pop("stale", None)
        entry.pop("skipped", None)
        data[name] = entry
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def choose(
    entries: dict[str, TextEncoderInfo],
    text: str = "",
    lang: str | None = None,
    name: str | None = None,
) -> TextEncoderInfo | None:
    """The encoder a text query uses; None means the main tower.

    Args:
        entries: the index's registry.
        text: the query text (for detection when neither ``lang`` nor ``name`` is given).
        lang: a language code; its encoder if one is registered, else the main tower
            (the model's own tower serves every language it was not taught). ``auto``
            or None: detected from ``text``.
        name: an encoder's name, or ``main``; wins over ``lang``.

    Raises:
        QueryError: ``name`` is not registered, or is stale.
    """
    if name:
        if name == MAIN:
            return None
        info = entries.get(name)
        if info is None:
            have = ", ".join([MAIN, *sorted(entries)])
            raise QueryError(f"no text encoder {name!r} in this index (it has: {have})")
        if info.stale:
            raise QueryError(
                f"text encoder {name!r} was trained for another model of this index "
                "(re-embedded since): teach the language again"
            )
        return info
    given = (lang or "").strip().lower()
    wanted = given if given not in ("", "auto") else detect_language(text)
    if wanted is None:
        return None
    usable = [i for n, i in sorted(entries.items()) if i.lang == wanted and not i.stale]
    return usable[0] if usable else None
