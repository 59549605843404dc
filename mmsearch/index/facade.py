"""``Index``: one index directory with its catalog, vector indexes and model — the embedded API.

import mmsearch
with mmsearch.Index.open("~/photos-index") as index:
    index.add_images(["~/Pictures"])
    for hit in index.search("a red car", k=5):
        print(hit.score, hit.path)
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from .. import config
from ..ann.faiss_index import VectorIndex
from ..ann.policy import choose_spec
from ..ann.upkeep import Upkeep
from ..ann.upkeep import check as check_derived
from ..catalog_base import ItemRecord, RootRecord, from_blobs
from ..catalog_reader import CatalogReader
from ..errors import (
    FileGoneError,
    IndexNotFoundError,
    InputError,
    ItemNotFoundError,
    MMSearchError,
    ModelMismatchError,
    QueryError,
)
from ..lock import WriterLock
from ..media import content_hash, draft_size, load_image
from ..models import ModelSpec, input_size, model_record, resolve_model, spec_from_record
from ..query import Filters, Query, Term
from ..results import (
    CheckProblem,
    CheckReport,
    Classification,
    Hit,
    IndexInfo,
    ProgressFactory,
    QueryTuning,
    RunSummary,
    Skipped,
    TagSummary,
    VectorInfo,
)
from ..runtime import QueryRuntime
from ..search import combine, search_filtered
from ..sources.files import IndexedFile, open_indexed
from ..sources.thumbnails import cached_thumbnail, make_thumbnail, thumb_size
from ..zeroshot import DEFAULT_TEMPLATES, DEFAULT_THRESHOLD, DEFAULT_TOP, tag_library
from ..zeroshot import classify as classify_images
from .common import TARGETS, QueryEncoder, _writer
from .conversations import ConversationMethods
from .exchange import ExchangeMethods
from .languages import LanguageMethods
from .runtimes import RuntimeMethods

if TYPE_CHECKING:  # the encoder (torch) is imported only when a model must run
    from indexer.distributed import RayEncoding, RayOptions
    from indexer.texts import TextRecord

    from ..catalog import Catalog
    from ..encoder import Encoder

logger = logging.getLogger(__name__)


def _ray_encoding(options: RayOptions) -> RayEncoding:
    """The Ray encoding of a run (imported here: the query path loads none of it)."""
    from indexer.distributed import RayEncoding

    return RayEncoding(options)


class Index(LanguageMethods, ConversationMethods, RuntimeMethods, ExchangeMethods):
    """An mmsearch index stored in one directory.

    Use :meth:`open` to get one; close it (or use it as a context manager) when done.

    Args:
        path: the index directory.
        catalog: its open catalog, or a reader of it: the full catalog (SQLAlchemy) is
            then opened when something writes (see :attr:`catalog`).
        spec: the model requested by the caller, or None to use the index's own.
        device: where to run the model.
        lock: the writer lock every method that writes holds (default: wait for it).
    """

    def __init__(
        self,
        path: Path,
        catalog: Catalog | CatalogReader,
        spec: ModelSpec | None,
        device: str | None = None,
        lock: WriterLock | None = None,
    ) -> None:
        self.path = path
        self.lock = lock or WriterLock(path)
        self._reader: CatalogReader | None = None
        self._catalog: Catalog | None = None
        if isinstance(catalog, CatalogReader):
            self._reader = catalog
        else:
            self._catalog = catalog
        self._catalog_lock = threading.Lock()
        self._requested = spec
        self._device = device
        self._encoder: Encoder | None = None
        self._vectors: dict[str, VectorIndex] = {}
        self._keeper: Upkeep | None = None
        self._model_info = self._reads.model_info()  # read once; refreshed when it changes
        self._query_encoder: QueryEncoder | None = None
        self._loaded_runtime: QueryRuntime | None = None
        self._text_towers: dict[str, QueryEncoder] = {}  # extra text encoders, loaded
        self._few_queries = False

    # -- lifetime -----------------------------------------------------------------------

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str] | None = None,
        model: str | os.PathLike[str] | None = None,
        pretrained: str | None = None,
        device: str | None = None,
        create: bool = True,
        wait: bool = True,
        on_wait: Callable[[int | None], None] | None = None,
        few_queries: bool = False,
    ) -> Index:
        """Open (or create) the index at ``path``.

        Args:
            path: index directory; default ``$MMSEARCH_INDEX`` or the platform data dir.
            model: model to use; default the one the index was built with, or
                ``ViT-B-32`` for a new index. See :mod:`mmsearch.encoder` for the forms.
            pretrained: pretrained tag or checkpoint file for ``model``.
            device: ``cpu``/``cuda``; default CUDA when available.
            create: create the index if it does not exist (else raise IndexNotFoundError).
            wait: when another process is writing the index, wait for it before writing
                (else writing raises IndexBusyError). Searching never waits.
            on_wait: called with the other writer's pid when waiting begins.
            few_queries: this process answers a query or two and ends (``mmsearch
                query``): the query runtime is set up to start fast rather than to
                answer many queries fast (see ``QueryRuntime.load``'s ``prepack``).
        """
        directory = Path(path).expanduser() if path else config.default_index_dir()
        directory = Path(os.path.abspath(directory))
        db = directory / config.CATALOG_FILE
        if not db.exists() and not create:
            raise IndexNotFoundError(directory)
        spec = None
        if model is not None or pretrained is not None:
            spec = resolve_model(model, pretrained)
        lock = WriterLock(directory, wait, on_wait)
        # A query reads the catalog without SQLAlchemy (a third of a cold query's time);
        # a catalog the reader cannot serve as it is (to migrate, damaged) gets the ORM.
        catalog: Catalog | CatalogReader | None = CatalogReader.open(db) if db.exists() else None
        if catalog is None:
            from ..catalog import Catalog

            if db.exists() and _has_content(db):
                catalog = Catalog(db)
            else:
                # Two processes creating one index (a watcher and a user's run): whoever
                # creates it holds the writer lock until the schema is written, and the
                # other waits for it here — a catalog still empty (0 bytes) is one being
                # created, not a damaged one, until the lock says its creator is done.
                with lock:
                    catalog = Catalog(db)
        index = cls(directory, catalog, spec, device, lock)
        index._few_queries = few_queries
        return index

    @property
    def catalog(self) -> Catalog:
        """The full catalog (SQLAlchemy): opened on first use when the index was opened
        with a reader, which is what reads go through (:attr:`_reads`)."""
        with self._catalog_lock:
            if self._catalog is None:
                from ..catalog import Catalog

                assert self._reader is not None
                self._catalog = Catalog(self._reader.path)
            return self._catalog

    @property
    def _reads(self) -> Catalog | CatalogReader:
        """What reads go through: the reader when there is one, else the catalog."""
        return self._reader if self._reader is not None else self.catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()
        if self._reader is not None:
            self._reader.close()
        self._vectors.clear()
        self._encoder = None
        self._query_encoder = self._loaded_runtime = None
        self._text_towers.clear()

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- model --------------------------------------------------------------------------

    @property
    def model_info(self) -> dict[str, Any] | None:
        """The model the index was built with (None while the index is empty)."""
        return self._model_info

    def _reload_model_info(self) -> None:
        self._model_info = self._reads.model_info()

    def _spec(self) -> ModelSpec:
        """The model to encode with: the requested one if compatible, else the stored one."""
        stored = self.model_info
        if self._requested is not None:
            if stored and stored["identity"] != self._requested.identity:
                raise ModelMismatchError(stored["display"], self._requested.display)
            return self._requested
        if stored:
            return spec_from_record(stored)
        return resolve_model(None, None)

    def encoder(self) -> Encoder:
        """The loaded model (loaded on first use)."""
        if self._encoder is None:
            from ..encoder import Encoder  # torch: seconds to import, only when encoding

            self._encoder = Encoder.load(self._spec(), device=self._device)
        return self._encoder

    @property
    def dim(self) -> int:
        info = self.model_info
        return int(info["dim"]) if info else self.encoder().dim

    # -- adding -------------------------------------------------------------------------

    @_writer
    def add_images(
        self,
        paths: Sequence[str | os.PathLike[str]],
        exclude: Sequence[str] = (),
        batch_size: int = 64,
        workers: int | None = None,
        progress: ProgressFactory | None = None,
        retry_skipped: bool = False,
        ray: RayOptions | None = None,
        follow_outside: bool = True,
        prune: bool = False,
    ) -> RunSummary:
        """Index (or bring up to date) the images under ``paths``. Files that could not be
        decoded before and did not change since are not read again, unless
        ``retry_skipped``. Symbolic links that lead outside ``paths`` are followed (and
        counted in ``links_outside``) unless ``follow_outside`` is False. A folder that
        cannot be seen (missing, empty where it held items, its drive unmounted) is offline:
        its items are kept and the summary's ``offline`` says why; ``prune`` removes what is
        not there instead (see :mod:`indexer.roots`).

        Returns a :class:`RunSummary`: counts of added, updated, unchanged, removed and
        reused items, and the files skipped with their reasons. With ``ray``, the planned
        files are decoded and encoded on a Ray cluster (:mod:`indexer.distributed`).
        """
        self._check_reembed_done()
        self._spec()  # refuse a mismatched model before any work
        from indexer.pipeline import index_images

        summary = index_images(
            self.catalog,
            paths,
            self.encoder if ray else lambda: self._run_encoder("image"),
            exclude=exclude,
            batch_size=batch_size,
            workers=workers,
            progress=progress,
            retry_skipped=retry_skipped,
            follow_outside=follow_outside,
            prune=prune,
            encode_jobs=_ray_encoding(ray).encode_images if ray else None,
            # Known without loading the model: files are decoded while it loads.
            image_size=None if self._encoder is not None else input_size(self._spec()),
        )
        self._reload_model_info()
        self.refresh("image")
        self._export_after_run()
        return summary

    def add_texts(
        self, texts: Iterable[str], source: str = "api", progress: ProgressFactory | None = None
    ) -> RunSummary:
        """Index texts given directly (empty ones are skipped; duplicates stored once)."""
        from indexer.texts import TextRecord

        records = [
            TextRecord(t.strip(), f"{source}:{n}")
            for n, t in enumerate(texts, 1)
            if t and t.strip()
        ]
        return self._add_text_records(records, progress)

    def add_text_files(
        self,
        paths: Sequence[str | os.PathLike[str]],
        column: str | None = None,
        field: str = "text",
        progress: ProgressFactory | None = None,
        ray: RayOptions | None = None,
    ) -> RunSummary:
        """Index the texts of .txt (a line each), .jsonl (``field``) or .csv/.tsv
        (``column``) files. Lines that can't be parsed are skipped and listed."""
        from indexer.texts import read_text_sources

        result = read_text_sources(paths, column=column, field=field)
        summary = self._add_text_records(result.records, progress, ray)
        summary.skipped.extend(Skipped(src, reason) for src, reason in result.skipped)
        summary.replaced_lines += result.replaced
        return summary

    @_writer
    def _add_text_records(
        self,
        records: Sequence[TextRecord],
        progress: ProgressFactory | None,
        ray: RayOptions | None = None,
    ) -> RunSummary:
        self._check_reembed_done()
        self._spec()
        from indexer.texts import index_texts

        remote = _ray_encoding(ray).encode_texts if ray else None
        encoder = self.encoder if ray else lambda: self._run_encoder("text")
        summary = index_texts(
            self.catalog, records, encoder, progress=progress, encode_texts=remote
        )
        self._reload_model_info()
        self.refresh("text")
        self._export_after_run()
        return summary

    @_writer
    def reembed(
        self,
        batch_size: int = 64,
        workers: int | None = None,
        progress: ProgressFactory | None = None,
    ) -> RunSummary:
        """Encode every item again with the requested model, which becomes the index's."""
        from indexer.reembed import reembed as reembed_items

        from ..encoder import Encoder  # torch: seconds to import, only when encoding

        if self._requested is None:
            raise MMSearchError("re-embedding needs a model: pass model=... (--model)")
        encoder = Encoder.load(self._requested, device=self._device)
        self.catalog.set_meta("reembed_pending", "1")
        self.catalog.set_model_info(model_record(encoder.spec, encoder.dim))
        self._reload_model_info()
        self._encoder = encoder
        summary = reembed_items(
            self.catalog, lambda: encoder, batch_size=batch_size, workers=workers, progress=progress
        )
        keeper = self._upkeep()
        if keeper is not None:  # rows written mid-way would hold old-model vectors
            keeper.reset()
        self.catalog.set_meta("reembed_pending", "")
        self._vectors.clear()
        for modality in TARGETS:
            self.refresh(modality)
        self._query_encoder = None  # the model changed
        self._export_after_run()
        return summary

    @_writer
    def update(
        self,
        images: Sequence[str | os.PathLike[str]] = (),
        text_files: Sequence[str | os.PathLike[str]] = (),
        reembed: bool = False,
        settings: dict[str, Any] | None = None,
        exclude: Sequence[str] = (),
        column: str | None = None,
        field: str = "text",
        batch_size: int = 64,
        workers: int | None = None,
        progress: ProgressFactory | None = None,
        retry_skipped: bool = False,
        ray: RayOptions | None = None,
        follow_outside: bool = True,
        prune: bool = False,
    ) -> RunSummary:
        """Everything ``mmsearch index`` does, in its order: re-embed with the requested
        model (first: nothing else may touch a catalog whose re-embed is pending), apply
        vector-index ``settings`` (keys of :meth:`configure`), bring the ``images`` folders
        up to date, add the ``text_files``. Returns one summary."""
        total = RunSummary()
        if reembed:
            total += self.reembed(batch_size=batch_size, workers=workers, progress=progress)
        if settings and any(v is not None for v in settings.values()):
            self.configure(**settings)
        if images:
            total += self.add_images(
                images,
                exclude=exclude,
                batch_size=batch_size,
                workers=workers,
                progress=progress,
                retry_skipped=retry_skipped,
                ray=ray,
                follow_outside=follow_outside,
                prune=prune,
            )
        if text_files:
            total += self.add_text_files(
                text_files, column=column, field=field, progress=progress, ray=ray
            )
        return total

    def _check_reembed_done(self) -> None:
        """Refuse to use a catalog whose re-embedding was interrupted: its rows come from
        two models, whichever model is named, so only finishing the re-embed may run."""
        if self._reads.get_meta("reembed_pending"):
            raise MMSearchError(
                "a re-embedding of this index was interrupted, so its items come from two "
                "models; finish it (`mmsearch index --reembed --model ...`) before using it"
            )

    # -- vectors ------------------------------------------------------------------------

    def _upkeep(self) -> Upkeep | None:
        """Maintainer of the store and vector indexes (None while the index is empty)."""
        info = self.model_info
        if info is None:
            return None
        if self._keeper is None or self._keeper.model != info["identity"]:
            self._keeper = Upkeep(self.path, self._reads, info["identity"], int(info["dim"]))
        return self._keeper

    def vectors(self, modality: str) -> VectorIndex:
        """The up-to-date ANN index of ``modality`` (repaired from the catalog if stale)."""
        self._check_reembed_done()
        vi = self._vectors.get(modality)
        keeper = self._upkeep()
        if (
            vi is None
            or vi.manifest.generation != self._reads.generation(modality)
            or (keeper is not None and keeper.must_refresh(modality))
        ):
            vi = self.refresh(modality)
        return vi

    def refresh(self, modality: str) -> VectorIndex:
        """Bring ``modality``'s index in line with the catalog: a missing, unreadable or
        foreign file is rebuilt; a stale one is topped up. Saved if changed."""
        keeper = self._upkeep()
        if keeper is None:
            return VectorIndex.empty(modality, 1, "")
        vi = keeper.refresh(modality, self._vectors.get(modality))
        self._vectors[modality] = vi
        return vi

    @_writer
    def configure(
        self,
        index_type: str | None = None,
        memory_budget: int | None = None,
        recall_target: float | None = None,
    ) -> None:
        """Choose the ANN index: ``index_type`` ("auto", "flat", "ivfpq"), a RAM budget in
        bytes, and the recall@10 target nprobe is tuned for. Settings are kept in the
        catalog; the vector indexes are rebuilt now if the choice changes them.

        Raises:
            MMSearchError: a budget the current corpus cannot fit, or an unknown type.
        """
        from dataclasses import replace

        self._check_reembed_done()
        current = self._reads.settings()
        new = replace(
            current,
            index_type=index_type or current.index_type,
            memory_budget=memory_budget if memory_budget is not None else current.memory_budget,
            recall_target=recall_target or current.recall_target,
        )
        dim = int(self.model_info["dim"]) if self.model_info else 512
        for modality in TARGETS:  # refuse a budget the corpus cannot fit, before saving
            try:
                choose_spec(
                    self._reads.count(modality),
                    dim,
                    index_type=new.index_type,
                    memory_budget=new.memory_budget,
                )
            except ValueError as exc:
                raise MMSearchError(f"{modality} index: {exc}") from exc
        if new == current:
            return
        self.catalog.save_settings(new)
        keeper = self._upkeep()
        for modality in TARGETS:  # rebuild under the new settings
            self._vectors.pop(modality, None)
            if keeper is not None:
                for path in keeper.paths(modality):
                    path.unlink(missing_ok=True)
                if self._reads.count(modality):
                    self.refresh(modality)

    # -- search -------------------------------------------------------------------------

    def search(
        self,
        query: str | Image.Image | os.PathLike[str] | Query,
        k: int = 10,
        target: str | None = None,
        include_self: bool = False,
        nprobe: int | None = None,
        filters: Filters | None = None,
        lang: str | None = None,
        text_encoder: str | None = None,
        dedupe: bool = False,
    ) -> list[Hit]:
        """Search the index.

        Args:
            query: a text (str), a PIL image, the path of an image file (a
                :class:`pathlib.Path`; use ``Path`` so a text is never taken for a file),
                or a :class:`~mmsearch.query.Query` (weighted terms and filters).
            k: number of hits.
            target: ``"image"`` or ``"text"``: which items to return (default: images).
            include_self: for an image query that is itself indexed, allow it as a hit.
            nprobe: IVF lists to visit (compressed indexes only).
            filters: conditions on the hits (they add to a Query's own).
            lang: the language of the query text: encoded by the index's text encoder
                for that language when it has one (see :meth:`add_text_encoder`); default
                detected from the text's script.
            text_encoder: the name of the text encoder to use (``main``: the model's own);
                wins over ``lang``.
            dedupe: fold near-duplicates of a better hit into it (see :meth:`duplicates`;
                each kept hit's ``duplicates`` lists the ids folded into it).

        Returns:
            Hits, best first.
        """
        if dedupe:
            return self._deduped(
                query, k, target, include_self, nprobe, filters, lang, text_encoder
            )
        if isinstance(query, Query):
            merged = _merge(query.filters, filters)
            return self.search_terms(
                query.terms, k, target, include_self, nprobe, merged, lang, text_encoder
            )
        target, ready = self._check_search(target, k)
        if not ready:
            return []
        vector, self_id = self._query_vector(query, lang, text_encoder)
        exclude = {self_id} if self_id is not None and not include_self else set()
        modality = "text" if isinstance(query, str) else "image"
        return self._search_vector(vector, k, target, exclude, nprobe, modality, filters)

    def search_terms(
        self,
        terms: Sequence[Term],
        k: int = 10,
        target: str | None = None,
        include_self: bool = False,
        nprobe: int | None = None,
        filters: Filters | None = None,
        lang: str | None = None,
        text_encoder: str | None = None,
    ) -> list[Hit]:
        """Search with a weighted sum of terms (texts, image files, indexed items): the
        normalised sum of their unit vectors times their weights. Items given as positive
        terms are not returned unless ``include_self``. See :meth:`search` for the rest."""
        target, ready = self._check_search(target, k)
        if not terms:
            raise QueryError("empty query: give a text, an image or an item")
        if not ready:
            return []
        vectors, exclude, modalities = self._term_vectors(terms, lang, text_encoder)
        vector = combine(vectors, [t.weight for t in terms])
        modality = "text" if "text" in modalities else "image"
        exclude = set() if include_self else exclude
        return self._search_vector(vector, k, target, exclude, nprobe, modality, filters)

    def _check_search(self, target: str | None, k: int) -> tuple[str, bool]:
        """The target to search, and whether there is anything to search at all."""
        target = target or "image"
        if target not in TARGETS:
            raise QueryError(f"unknown target {target!r}: use one of {', '.join(TARGETS)}")
        if k < 1:
            raise QueryError("k must be at least 1")
        self._check_reembed_done()
        if self.model_info is None:
            return target, False
        self._spec()  # a mismatched model is refused before anything is encoded
        return target, True

    def _search_vector(
        self,
        vector: np.ndarray,
        k: int,
        target: str,
        exclude: set[int],
        nprobe: int | None,
        query_modality: str,
        filters: Filters | None,
    ) -> list[Hit]:
        vi = self.vectors(target)
        keeper = self._upkeep()
        if keeper is None:  # cannot happen: model_info was checked by the caller
            return []
        filters = self._without_offline(filters or Filters())
        return search_filtered(
            self._reads,
            vi,
            vector,
            k,
            keeper.fetch,
            filters,
            exclude=exclude,
            nprobe=nprobe,
            query_modality=query_modality,
        )

    def _without_offline(self, filters: Filters) -> Filters:
        """``filters`` that also leave out the items of offline roots (unless asked)."""
        if filters.include_offline:
            return filters
        offline = tuple(self._reads.offline_roots())
        return replace(filters, exclude_under=offline) if offline else filters

    @_writer
    def gc(self, older_than_days: float | None = None) -> int:
        """Empty the trash (items removed more than ``older_than_days`` ago; all: None):
        a file coming back after that is encoded again. Returns how many were forgotten."""
        older = None if older_than_days is None else older_than_days * 86400
        return self.catalog.empty_trash(older_than=older)

    def roots(self) -> list[RootRecord]:
        """The folders indexed, as the last run saw them (online or offline, and why)."""
        return self._reads.roots()

    def item(self, item_id: int) -> ItemRecord:
        """The catalog record of one item.

        Raises:
            ItemNotFoundError: no item has that id (never had, or it was removed).
        """
        record = self._reads.records([item_id]).get(item_id)
        if record is None:
            raise ItemNotFoundError(item_id)
        return record

    def open_item_file(self, item_id: int) -> IndexedFile:
        """The file of item ``item_id``, opened, if it is still the content that was
        indexed (see :func:`mmsearch.sources.files.open_indexed`): read its bytes from the
        returned object (and close it), never from the path.

        Raises:
            ItemNotFoundError: no such item.
            FileGoneError: it has no file (a text), or the file is gone.
            FileChangedError: the file is not the indexed content any more.
        """
        rec = self.item(item_id)
        if rec.modality != "image" or not rec.path:
            raise FileGoneError(item_id, "a text item has no file")
        return open_indexed(
            rec.id, rec.path, rec.size, rec.mtime_ns, rec.content_hash, self._reads.file_hash
        )

    def thumbnail(self, item_id: int, size: int = 256) -> Path:
        """A JPEG thumbnail of item ``item_id`` (longest side ``size`` rounded up to one of
        :data:`~mmsearch.sources.thumbnails.THUMB_SIZES`), cached in the index directory by
        content hash and made only from the verified file.

        Raises:
            ItemNotFoundError, FileGoneError, FileChangedError: as :meth:`open_item_file`.
            QueryError: the file cannot be decoded.
        """
        rec = self.item(item_id)
        side = thumb_size(size)
        target = cached_thumbnail(self.path, rec.id, rec.content_hash, side)
        if target.exists():  # made from this very content before
            return target
        with self.open_item_file(item_id) as source:
            return make_thumbnail(source, target, side)

    def search_item(
        self,
        item_id: int,
        k: int = 10,
        target: str | None = None,
        nprobe: int | None = None,
        filters: Filters | None = None,
    ) -> list[Hit]:
        """Items like an indexed item ("more like this"), the item itself left out. Its
        stored embedding is the query: no model is loaded.

        Raises:
            ItemNotFoundError: no item has that id.
        """
        target, ready = self._check_search(target, k)
        self.item(item_id)  # ItemNotFoundError before anything else
        if not ready:
            return []
        vector, modality = self._item_vector(item_id)
        vector = vector / max(float(np.linalg.norm(vector)), 1e-12)  # float16 → unit
        return self._search_vector(vector, k, target, {item_id}, nprobe, modality, filters)

    def _term_vectors(
        self, terms: Sequence[Term], lang: str | None = None, text_encoder: str | None = None
    ) -> tuple[np.ndarray, set[int], set[str]]:
        """Unit vectors of the terms (texts encoded together), the ids of indexed items
        among the positive terms, and the modalities the terms come from."""
        rows: list[np.ndarray | None] = [None] * len(terms)
        exclude: set[int] = set()
        modalities: set[str] = set()
        texts = [n for n, t in enumerate(terms) if t.kind == "text"]
        if texts:
            values = [terms[n].value for n in texts]
            tower = self.choose_text_encoder(" ".join(values), lang, text_encoder)
            encoded = self._encode_query("text", values, tower)
            for n, vec in zip(texts, encoded, strict=True):
                rows[n] = vec
            modalities.add("text")
        for n, term in enumerate(terms):
            item_id: int | None = None
            if term.kind == "image":
                rows[n], item_id = self._image_file_vector(Path(term.value))
                modalities.add("image")
            elif term.kind == "item":
                rows[n], modality = self._item_vector(term.item_id)
                item_id = term.item_id
                modalities.add(modality)
            if item_id is not None and term.weight > 0:
                exclude.add(item_id)
        return np.stack([r for r in rows if r is not None]), exclude, modalities

    def _item_vector(self, item_id: int) -> tuple[np.ndarray, str]:
        """An indexed item's stored embedding and modality.

        Raises:
            ItemNotFoundError: no such item (a QueryError: ``id:N`` names a missing item).
        """
        record = self.item(item_id)
        found, vectors = self._reads.embeddings([item_id], self.dim)
        if not found:  # removed since it was looked up
            raise ItemNotFoundError(item_id)
        return vectors[0], record.modality

    def _query_vector(
        self, query: Any, lang: str | None = None, text_encoder: str | None = None
    ) -> tuple[np.ndarray, int | None]:
        if isinstance(query, str):
            text = query.strip()
            if not text:
                raise QueryError("empty query: give a text or an image")
            tower = self.choose_text_encoder(text, lang, text_encoder)
            return self._encode_query("text", [text], tower)[0], None
        if isinstance(query, Image.Image):
            return self._encode_query("image", [query])[0], None
        if isinstance(query, os.PathLike):
            return self._image_file_vector(Path(query))
        raise QueryError(
            f"cannot search with a {type(query).__name__}: give a str, a PIL "
            "image, a pathlib.Path or a Query"
        )

    def _image_file_vector(self, path: Path) -> tuple[np.ndarray, int | None]:
        """An image file's query vector, and the id of the item it is (if indexed).

        An indexed unchanged file, or an identical copy of indexed content, reuses the
        stored embedding, so no model is loaded at all.
        """
        path = Path(os.path.abspath(path.expanduser()))
        try:
            digest = content_hash(path, algorithm=self._reads.file_hash)
        except InputError as exc:
            raise QueryError(f"cannot read query image {path}: {exc.reason}") from exc
        record = self._reads.find_path(str(path))
        self_id = record.id if record else None
        stored = self._reads.embeddings_by_hash("image", [digest]).get(digest)
        if stored is not None:  # this content is indexed: the embedding is known
            return from_blobs([stored], self.dim)[0], self_id
        size = self.query_encoder().image_size
        try:
            loaded = load_image(str(path), draft_size=draft_size(size))
        except InputError as exc:
            raise QueryError(f"cannot read query image {path}: {exc.reason}") from exc
        return self._encode_query("image", [loaded.image])[0], self_id

    # -- integrity ---------------------------------------------------------------------

    def check(self, repair: bool = False) -> CheckReport:
        """Verify every derived file against the catalog: every store row, every vector
        index id, every exact vector (an IVF-PQ index: its ids, list sizes, and a sample of
        stored vectors that must find themselves). With ``repair``, rebuild what is wrong
        from the catalog. (Opening the index already repairs what its cheap checks find;
        those repairs are listed too.)

        Returns:
            A :class:`CheckReport`; ``report.ok`` is False while a problem is unrepaired.
        """
        if self._reads.get_meta("reembed_pending"):
            problem = CheckProblem(
                "catalog",
                "a re-embedding was interrupted: items come from two models; finish it "
                "with `mmsearch index --reembed --model ...`",
            )
            return CheckReport([problem], {})
        if self.model_info is None:
            return CheckReport([], {"items": 0})
        self._keeper = None  # a fresh keeper: run the checks made on open, too
        self._vectors.clear()
        keeper = self._upkeep()
        if keeper is None:
            return CheckReport([], {"items": 0})
        problems, checked = check_derived(keeper, repair=repair)
        return CheckReport(problems, checked)

    # -- zero-shot labels -----------------------------------------------------------------

    def classify(
        self,
        images: Sequence[str | os.PathLike[str] | Image.Image],
        labels: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
    ) -> list[Classification]:
        """Zero-shot label probabilities of each image, with the index's model."""
        self._spec()
        return classify_images(self.encoder(), images, labels, templates)

    def tag(
        self,
        labels: Sequence[str],
        templates: Sequence[str] = DEFAULT_TEMPLATES,
        threshold: float = DEFAULT_THRESHOLD,
        top: int = DEFAULT_TOP,
    ) -> TagSummary:
        """Tag the indexed images with labels of ``labels`` (incremental; see
        :func:`mmsearch.zeroshot.tag_library`). Stored embeddings are scored: no image is
        decoded."""
        self._check_reembed_done()
        info = self.model_info
        if info is None:
            return TagSummary(len(labels))
        self._spec()
        return tag_library(
            self.catalog,
            self.encoder,
            info["identity"],
            int(info["dim"]),
            labels,
            templates,
            threshold=threshold,
            top=top,
        )

    # -- info ---------------------------------------------------------------------------

    def info(self) -> IndexInfo:
        """What the index holds."""
        self._check_reembed_done()
        model = self.model_info
        vectors = []
        for modality in TARGETS:
            if model is None or not self._reads.count(modality):
                continue
            vi = self.vectors(modality)
            params = dict(vi.manifest.params)
            by_query = {
                query: QueryTuning(
                    int(tuned["nprobe"]),
                    int(tuned["rerank_factor"]),
                    tuned.get("tuned_recall", {}).get(query),
                )
                for query, tuned in sorted(params.pop("by_query", {}).items())
            }
            vectors.append(
                VectorInfo(
                    modality,
                    vi.count,
                    vi.manifest.factory,
                    params,
                    vi.bytes_per_vector(),
                    by_query,
                )
            )
        size = sum(p.stat().st_size for p in self.path.glob(config.CATALOG_FILE + "*"))
        return IndexInfo(
            path=str(self.path),
            model=model["display"] if model else "",
            dim=int(model["dim"]) if model else 0,
            images=self._reads.count("image"),
            texts=self._reads.count("text"),
            schema_version=self._reads.schema_version,
            vectors=vectors,
            catalog_bytes=size,
            query_runtime=self.query_runtime_status(),
            index_runtime=self.index_runtime_status(),
            tags=self._reads.tag_counts(),
            skipped_files=[
                Skipped(r.path, r.reason, remembered=True) for r in self._reads.skipped_files()
            ],
            text_encoders=[e.to_dict() for e in self.text_encoders()],
            roots=[asdict(r) for r in self._reads.roots()],
            trash=self._reads.trash_count(),
        )


def _has_content(db: Path) -> bool:
    """Whether the catalog file holds anything (or its write-ahead log does)."""
    wal = db.with_name(db.name + "-wal")
    try:
        return db.stat().st_size > 0 or (wal.exists() and wal.stat().st_size > 0)
    except FileNotFoundError:
        return False


def _merge(own: Filters, extra: Filters | None) -> Filters:
    """A query's filters with more given beside it (the extra ones win where both set)."""
    if extra is None:
        return own
    from dataclasses import fields, replace

    changes = {f.name: getattr(extra, f.name) for f in fields(extra)}
    return replace(own, **{k: v for k, v in changes.items() if v not in (None, ())})
