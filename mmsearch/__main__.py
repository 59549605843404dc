"""``python -m mmsearch``."""

import os

# Before anything imports faiss or torch: their OpenMP runtimes read this once, when they
# load. Threads that sleep instead of busy-waiting keep a query fast on a busy machine
# (see ``mmsearch.cli.quiet_openmp``).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from .cli import main  # noqa: E402

if __name__ == "__main__":
    main()
