"""``mmsearch serve``: an HTTP API and a web page over an index (FastAPI + uvicorn, the
``serve`` extra). Modules: ``command`` (the click command), ``app`` (routes), ``backend``
(the one adapter onto :class:`mmsearch.Index`), ``security`` (middleware), ``images``
(uploads and thumbnails), ``static/`` (the page: plain HTML, CSS and JS)."""
