"""The decoding stage of an indexing run: paths → read once, hashed, decoded items.

Each file is read into memory once; its content hash is computed on those bytes and, when
the content is already stored (a renamed, moved or duplicate file), the item goes back
without decoding — the pipeline reuses the stored embedding. Otherwise the same bytes are
decoded and prepared for the encoder (:meth:`ImageFeed.prepare`).

:func:`read_item` does one file; :class:`DecodingThreads` runs it over many files in
threads (reading, hashing and Pillow's decoding release the GIL) and hands each item on
as soon as it is done, in completion order: a slow file holds nothing up.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Container, Sequence
from dataclasses import dataclass

from mmsearch import media
from mmsearch.errors import InputError
from mmsearch.media import FileBytes, PreparedImage

logger = logging.getLogger(__name__)

#: How often blocked threads look at the stop flag (seconds).
POLL = 0.05


@dataclass
class ReadItem:
    """One file after the decoding stage: exactly one of known content (``image`` and
    ``error`` None), a prepared ``image``, or an ``error``."""

    index: int  # position in the list of files given
    path: str
    digest: str | None = None  # content hash; None when the file could not be read
    image: PreparedImage | None = None
    error: InputError | None = None

    @property
    def known(self) -> bool:
        """Content already stored: reuse its embedding (not decoded)."""
        return self.digest is not None and self.image is None and self.error is None

    @property
    def unreadable(self) -> bool:
        """The file could not be read at all (vanished, permission denied): a passing
        condition, not remembered as a bad file (a decoding failure is)."""
        return self.digest is None and self.error is not None


def read_item(
    index: int,
    path: str,
    known: Container[str],
    prepare: Callable[[str, FileBytes], PreparedImage],
    file_hash: str = "blake3",
) -> ReadItem:
    """Read ``path`` once, hash it, and unless its hash is in ``known`` decode and prepare
    it from the same bytes. Failures come back in the item, never raised (an exception
    other than :class:`InputError` from ``prepare`` — a model's preprocessing choking on an
    odd image — becomes a "transform failed" reason; ``prepare`` loading the model may
    raise anything, and that propagates)."""
    try:
        data = media.read_file(path, algorithm=file_hash)
    except InputError as exc:
        if exc.reason == media.NOT_REGULAR:  # a decoding failure, as load_image reports it
            return ReadItem(index, path, "", error=exc)
        return ReadItem(index, path, error=exc)
    if data.digest in known:
        return ReadItem(index, path, data.digest)
    try:
        return ReadItem(index, path, data.digest, image=prepare(path, data))
    except InputError as exc:
        logger.debug("skipping %s", exc)
        return ReadItem(index, path, data.digest, error=exc)
    except FeedUnavailable:
        raise
    except Exception as exc:  # a bad image must not abort the run
        logger.debug("preparing failed for %s", path, exc_info=True)
        return ReadItem(
            index, path, data.digest, error=InputError(path, f"transform failed: {exc}")
        )


class FeedUnavailable(Exception):
    """Raised by a ``prepare`` that could not load the model: the run cannot go on (the
    decoding threads hand ``cause`` to the run's thread)."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Gate:
    """Lets the decoding threads start a file only while it is open; the encoder closes
    it while the model runs on the same cores (the ``alternate`` schedule)."""

    def __init__(self) -> None:
        self.enabled = False
        self._open = threading.Event()
        self._open.set()

    def close(self) -> None:
        if self.enabled:
            self._open.clear()

    def open(self) -> None:
        self._open.set()

    def wait(self, stop: threading.Event) -> None:
        while not self._open.wait(POLL):
            if stop.is_set():
                return


def put(q: queue.Queue[object], item: object, stop: threading.Event) -> bool:
    """Put into a bounded queue unless the run stops first; False when it stopped."""
    while not stop.is_set():
        try:
            q.put(item, timeout=POLL)
            return True
        except queue.Full:
            continue
    return False


class DecodingThreads:
    """Threads that run :func:`read_item` over ``paths`` (``(index, path)`` pairs).

    Items with a prepared image go to ``to_encode`` (bounded: the decoders wait when the
    encoder falls behind, which bounds memory), all others to ``done``. When every path
    is handled, ``finished`` is set and ``on_finished`` called. An exception escaping
    ``read_item`` (the model failed to load) is passed to ``on_error`` and the thread ends.
    """

    def __init__(
        self,
        paths: Sequence[tuple[int, str]],
        work: Callable[[int, str], ReadItem],
        to_encode: queue.Queue[object],
        done: Callable[[ReadItem], None],
        threads: int,
        gate: Gate,
        stop: threading.Event,
        on_error: Callable[[BaseException], None],
        on_finished: Callable[[], None],
    ) -> None:
        self._paths = paths
        self._next_at = 0  # the next path a thread takes
        self._advised = 0  # paths before this one were announced to the kernel
        self._lock = threading.Lock()
        self._work, self._to_encode, self._done = work, to_encode, done
        self._gate, self._stop = gate, stop
        self._on_error, self._on_finished = on_error, on_finished
        self.finished = threading.Event()
        self._running = threads
        self.threads = [
            threading.Thread(target=self._run, name=f"mmsearch-decode-{n}", daemon=True)
            for n in range(threads)
        ]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def join(self) -> None:
        for t in self.threads:
            t.join()

    def _next(self) -> tuple[int, str] | None:
        with self._lock:
            if self._next_at >= len(self._paths):
                return None
            self._next_at += 1
            return self._paths[self._next_at - 1]

    def read_ahead(self, n: int) -> None:
        """Have the kernel read the next ``n`` files the threads will take (those not
        asked for already) while they wait: with the ``alternate`` schedule the encoder
        calls this as it closes the gate, so a cold file's disk time passes while the model
        runs instead of in the decoding phase."""
        with self._lock:
            start = max(self._advised, self._next_at)
            end = max(start, min(len(self._paths), self._next_at + n))
            self._advised = end
        for _, path in self._paths[start:end]:
            media.read_soon(path)

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._gate.wait(self._stop)
                job = self._next()
                if job is None or self._stop.is_set():
                    break
                item = self._work(*job)
                if item.image is not None:
                    put(self._to_encode, item, self._stop)
                else:
                    self._done(item)
        except FeedUnavailable as exc:
            self._on_error(exc.cause)
        except BaseException as exc:  # noqa: BLE001 - handed to the run's thread
            self._on_error(exc)
        finally:
            with self._lock:
                self._running -= 1
                last = self._running == 0
            if last:
                self.finished.set()
                self._on_finished()


def take_batch(
    q: queue.Queue[object],
    size: int,
    finished: threading.Event,
    stop: threading.Event,
    wait_full: bool,
    linger: float = 0.0,
) -> list[object]:
    """Up to ``size`` items in the order they were decoded; empty once decoding finished
    and nothing is left.

    With ``wait_full`` (the decoders run while the encoder waits) the batch fills up, else
    it takes what is there plus what arrives within ``linger`` seconds of its first item.
    """
    batch: list[object] = []
    deadline = 0.0
    while len(batch) < size and not stop.is_set():
        if batch and not wait_full:
            left = deadline - time.monotonic()
            try:
                batch.append(q.get(timeout=left) if left > 0 else q.get_nowait())
            except queue.Empty:
                break
            continue
        try:
            batch.append(q.get(timeout=POLL))
        except queue.Empty:
            if finished.is_set() and q.empty():
                break
            continue
        if len(batch) == 1:
            deadline = time.monotonic() + linger
    return batch
