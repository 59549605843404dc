"""The ``Index`` facade's languages: extra text encoders taught to an index (see
:mod:`mmsearch.languages`)."""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING

from .. import config
from ..errors import MMSearchError, QueryError, QueryRuntimeError
from ..languages import DIR_NAME as TEXT_ENCODERS_DIR
from ..languages import MAIN as MAIN_TOWER
from ..languages import META_KEY as TEXT_ENCODERS_KEY
from ..languages import TextEncoderInfo, choose, dump_registry, parse_registry
from ..languages import check_name as check_encoder_name
from ..results import ProgressFactory
from ..runtime import QueryRuntime
from .common import QueryEncoder, _writer

if TYPE_CHECKING:  # the encoder (torch) is imported only when a model must run
    from ..finetune.language import LanguageConfig

logger = logging.getLogger(__name__)


class LanguageMethods:
    """Mixed into :class:`~mmsearch.index.Index`."""

    # -- languages ------------------------------------------------------------------------

    def text_encoders(self) -> list[TextEncoderInfo]:
        """The index's extra text encoders (see :meth:`add_text_encoder`), by name."""
        return list(self._registry().values())

    def _registry(self) -> dict[str, TextEncoderInfo]:
        identity = self.model_info["identity"] if self.model_info else None
        return parse_registry(self._reads.get_meta(TEXT_ENCODERS_KEY), identity)

    def choose_text_encoder(
        self, text: str = "", lang: str | None = None, name: str | None = None
    ) -> str:
        """The name of the text encoder a query uses (``main``: the model's own tower): the
        one named, else the one taught ``lang``, else the one of the language detected
        from the text's script (see :mod:`mmsearch.languages`), else ``main``.

        Raises:
            QueryError: ``name`` is unknown or stale.
        """
        if not (lang or name) and text.isascii():
            return MAIN_TOWER  # detection needs a non-Latin script: no catalog read
        chosen = choose(self._registry(), text, lang, name)
        return chosen.name if chosen is not None else MAIN_TOWER

    def _text_tower(self, name: str) -> QueryEncoder:
        """An extra text encoder, loaded once: its ONNX export (no torch) when valid, else
        torch (the index model with its text-tower weights)."""
        tower = self._text_towers.get(name)
        if tower is not None:
            return tower
        info = choose(self._registry(), name=name)
        assert info is not None  # choose() raises for unknown names
        directory = self.path / TEXT_ENCODERS_DIR / name
        choice = config.query_runtime_choice()
        if choice != "torch":
            try:
                tower = QueryRuntime.load(
                    directory / "runtime", expect_identity=info.identity, towers=()
                )
            except QueryRuntimeError as exc:
                if choice == "onnx":
                    raise
                logger.info("text encoder %s runs on torch: %s", name, exc.reason)
        if tower is None:
            from ..finetune.language import load_tower  # torch

            self._spec()
            tower = load_tower(self.encoder(), directory, f"{name} ({info.lang})")
        self._text_towers[name] = tower
        return tower

    @_writer
    def add_text_encoder(
        self,
        pairs: str | os.PathLike[str],
        lang: str,
        name: str | None = None,
        training: LanguageConfig | None = None,
        init: str | os.PathLike[str] | None = None,
        init_pretrained: str | None = None,
        image_column: str = "image",
        caption_column: str = "caption",
        progress: ProgressFactory | None = None,
    ) -> TextEncoderInfo:
        """Teach the index a language without re-encoding its images: train a text tower
        on the caption pairs of a file against the index model's frozen image tower, and
        register it as an extra text encoder (files under ``text-encoders/NAME/`` in the
        index directory: weights and a verified ONNX export for torch-free queries).

        Indexed images reuse their stored vectors (same content hash); other images of the
        pairs are encoded once. The index's vectors are not touched. Queries in ``lang``
        then use it (:meth:`search` ``lang=``, detection, or ``text_encoder=NAME``).

        Args:
            pairs: CSV/TSV/JSONL of image paths and captions in the language.
            lang: the language code, e.g. ``zh``.
            name: the encoder's name (default ``lang``); an existing one is replaced.
            training: settings (:class:`~mmsearch.finetune.language.LanguageConfig`).
            init: a model whose text tower (same architecture) to start from; default the
                index model's.
            init_pretrained: its pretrained tag or checkpoint.
            image_column / caption_column: columns of the pairs file.
            progress: progress-bar factory.

        Returns:
            The registered encoder, with held-out recall of it and of the main tower;
            ``skipped`` lists the pair rows not used.

        Raises:
            MMSearchError: the index has no model yet; bad name; too few pairs; the
                export fails its checks.
        """
        import shutil
        import time

        from ..export import export_model  # torch: needed only to teach
        from ..finetune.language import save_tower, teach_text_tower

        self._check_reembed_done()
        name = check_encoder_name(name or lang.strip().lower())
        if self.model_info is None:
            raise MMSearchError("the index has no model yet: index images first")
        self._spec()
        base = self.encoder()
        start = None
        if init is not None:
            from ..encoder import Encoder

            start = Encoder.load(init, init_pretrained, device=self._device)
        taught = teach_text_tower(
            self.catalog,
            base,
            pairs,
            training,
            init=start,
            image_column=image_column,
            caption_column=caption_column,
            display=f"{base.spec.display} + {name} text encoder",
            progress=progress,
        )
        root = self.path / TEXT_ENCODERS_DIR
        tmp = root / f".{name}.{os.getpid()}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            save_tower(taught.encoder, tmp, {"lang": lang, "name": name})
            export_model(taught.encoder, tmp / "runtime", text_only=True)
            final = root / name
            old = root / f".{name}.{os.getpid()}.old"
            if final.exists():
                os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        info = TextEncoderInfo(
            name=name,
            lang=lang.strip().lower(),
            model=self.model_info["identity"],
            identity=taught.encoder.spec.identity,
            context_length=taught.encoder.context_length,
            heldout=taught.heldout,
            main_heldout=taught.main_heldout,
            train_pairs=taught.train_pairs,
            reused_vectors=taught.reused_vectors,
            encoded_images=taught.encoded_images,
            seconds=taught.seconds,
            init=start.spec.display if start is not None else base.spec.display,
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        registry = self._registry()
        registry[name] = info
        self.catalog.set_meta(TEXT_ENCODERS_KEY, dump_registry(registry))
        self._text_towers.pop(name, None)
        info.skipped = taught.skipped
        return info

    @_writer
    def remove_text_encoder(self, name: str) -> None:
        """Forget an extra text encoder and delete its files.

        Raises:
            QueryError: no encoder has that name.
        """
        import shutil

        registry = self._registry()
        if name not in registry:
            have = ", ".join(sorted(registry)) or "none"
            raise QueryError(f"no text encoder {name!r} in this index (extra ones: {have})")
        del registry[name]
        self.catalog.set_meta(TEXT_ENCODERS_KEY, dump_registry(registry))
        self._text_towers.pop(name, None)
        shutil.rmtree(self.path / TEXT_ENCODERS_DIR / name, ignore_errors=True)
