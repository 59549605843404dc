"""The ``Index`` facade's model runtimes: what encodes queries (the model's exported ONNX
towers when they are valid: no torch in a query, else the torch encoder), what encodes an
indexing run on a machine without a GPU (the same towers: :mod:`indexer.runtime_encoder`),
and exporting the towers after a run that loaded the model."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import config
from ..errors import MMSearchError, QueryRuntimeError
from ..languages import MAIN as MAIN_TOWER
from ..runtime import QueryRuntime
from .common import QueryEncoder

if TYPE_CHECKING:  # torch: imported only to export
    from indexer.common import EncoderLike

    from ..export import ExportReport

logger = logging.getLogger(__name__)


class RuntimeMethods:
    """Mixed into :class:`~mmsearch.index.Index`."""

    # -- what encodes an indexing run -----------------------------------------------------

    def _run_encoder(self, tower: str) -> EncoderLike:
        """What encodes a run's images (``tower`` ``image``) or texts: the torch encoder
        when it is loaded already or :meth:`_why_runs_use_torch` says so; else the model's
        exported towers when they are there and ``tower`` passes its self-test; else
        torch."""
        if self._encoder is not None or self._why_runs_use_torch() is not None:
            return self.encoder()
        from indexer.runtime_encoder import RuntimeEncoder

        spec = self._spec()
        try:
            encoder = RuntimeEncoder(self._runtime(spec.identity), spec)
            encoder.check(tower)
        except QueryRuntimeError as exc:
            logger.info("encoding the run with torch: %s", exc.reason)
            return self.encoder()
        logger.info("encoding the run with the exported %s tower", tower)
        return encoder

    def index_runtime_status(self) -> str:
        """What the next indexing run encodes with, for ``mmsearch info``: ``onnx`` (the
        model's exported towers, on a machine without a GPU; they are self-tested when the
        run opens them) or torch and why."""
        info = self.model_info
        if info is None:
            return "torch (no model yet: the first run loads it and exports its towers)"
        why = self._why_runs_use_torch()
        if why is not None:
            return f"torch ({why})"
        try:
            self._runtime(info["identity"])  # the stored model's, as query_runtime_status
        except QueryRuntimeError:
            return "torch (no valid export of the model's towers: see queries)"
        return "onnx (the model's exported towers)"

    def _why_runs_use_torch(self) -> str | None:
        """Why indexing runs encode with torch whatever the export: asked for, or a GPU may
        be there; None when the export decides."""
        if config.index_runtime_choice() == "torch":
            return f"${config.ENV_INDEX_RUNTIME}=torch"
        if not self._cpu_only():
            return "a GPU may be there"
        return None

    def _cpu_only(self) -> bool:
        """Whether the model would run on the CPU (the device asked for, else no GPU)."""
        name = self._device or os.environ.get(config.ENV_DEVICE)
        if name:
            return name.strip().lower() == "cpu"
        return not config.gpu_may_be_present()

    # -- query encoding -----------------------------------------------------------------

    def query_encoder(self) -> QueryEncoder:
        """What encodes queries: the model's exported ONNX towers (no torch: a cold query
        costs a fraction of a second) when they are there and pass their checks, else the
        torch encoder. ``$MMSEARCH_QUERY_RUNTIME`` = ``torch`` or ``onnx`` forces one."""
        if self._query_encoder is None:
            self._query_encoder = self._load_query_encoder()
        return self._query_encoder

    def _load_query_encoder(self) -> QueryEncoder:
        choice = config.query_runtime_choice()
        if choice == "torch" or (self._encoder is not None and choice == "auto"):
            return self.encoder()  # asked for, or loaded already by this process
        try:
            return self._runtime(self._spec().identity)
        except QueryRuntimeError as exc:
            if choice == "onnx":
                raise
            logger.info("queries are encoded with torch: %s", exc.reason)
            return self.encoder()

    def _encode_query(self, kind: str, items: list[Any], tower: str = MAIN_TOWER) -> np.ndarray:
        if kind == "text" and tower != MAIN_TOWER:
            return self._text_tower(tower).encode_texts(items)
        encoder = self.query_encoder()
        try:
            if kind == "text":
                return encoder.encode_texts(items)
            return encoder.encode_images(items)
        except QueryRuntimeError as exc:  # a tower refused when it was opened
            if config.query_runtime_choice() == "onnx":
                raise
            logger.warning("query runtime refused (%s); encoding with torch", exc.reason)
            self._query_encoder = self.encoder()
            return self._encode_query(kind, items)

    def query_runtime_status(self) -> str:
        """How queries are encoded, for ``mmsearch info``: the ONNX runtime's directory,
        or torch and why."""
        info = self.model_info
        if info is None:
            return "none yet (no model)"
        if config.query_runtime_choice() == "torch":
            return f"torch (${config.ENV_QUERY_RUNTIME}=torch)"
        try:
            runtime = self._runtime(info["identity"])
        except QueryRuntimeError as exc:
            failed = _export_failure(info["identity"])
            if failed:
                return f"torch (not exportable: {failed}; `mmsearch export-model` retries)"
            return f"torch ({exc.reason}; `mmsearch export-model` exports it)"
        return f"onnx ({runtime.path})"

    def _runtime(self, identity: str) -> QueryRuntime:
        """The model's exported query runtime, loaded (and verified) once per process; its
        towers open on first use, so a text query never loads the image tower.

        Raises:
            QueryRuntimeError: there is no valid export for ``identity``.
        """
        if self._loaded_runtime is None or self._loaded_runtime.identity != identity:
            self._loaded_runtime = QueryRuntime.load(
                config.runtime_dir(identity),
                expect_identity=identity,
                towers=(),
                prepack=not self._few_queries,
            )
        return self._loaded_runtime

    def export_runtime(self, force: bool = False) -> ExportReport | None:
        """Export the model's text and image towers to ONNX for torch-free queries, checked
        against torch on probe inputs first (see :mod:`mmsearch.export`). Does nothing when
        a valid export exists, unless ``force``. Returns the report of a new export.

        Raises:
            ExportError: the model cannot be exported, or the export fails its checks.
        """
        from ..export import export_model  # torch: needed only to export

        spec = self._spec()
        if not force:
            try:
                self._runtime(spec.identity)
                return None
            except QueryRuntimeError:
                pass
        note = _export_failure_file(spec.identity)
        try:
            report = export_model(self.encoder(), config.runtime_dir(spec.identity))
        except MMSearchError as exc:  # remembered: info says why, runs do not retry
            note.parent.mkdir(parents=True, exist_ok=True)
            note.write_text(str(exc), encoding="utf-8")
            raise
        note.unlink(missing_ok=True)
        self._query_encoder = self._loaded_runtime = None
        return report

    def _export_after_run(self) -> None:
        """A run that loaded the model exports its query towers once (a later run or query
        with a valid export does nothing); a model that cannot be exported keeps torch."""
        if self._encoder is None or config.query_runtime_choice() == "torch":
            return
        if _export_failure(self._spec().identity):
            return  # this model failed to export before; `mmsearch export-model` retries
        try:
            report = self.export_runtime()
        except MMSearchError as exc:
            logger.warning("queries will be encoded with torch: %s", exc)
            return
        if report is not None:
            logger.info("exported the query runtime to %s", report.out_dir)


def _export_failure_file(identity: str) -> Path:
    """Where the reason a model's towers could not be exported is kept (beside its
    runtime directory), so that ``mmsearch info`` says why queries use torch."""
    directory = config.runtime_dir(identity)
    return directory.with_name(directory.name + ".export-error")


def _export_failure(identity: str) -> str | None:
    try:
        return _export_failure_file(identity).read_text(encoding="utf-8").strip() or None
    except OSError:
        return None
