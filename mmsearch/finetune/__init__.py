"""Fine-tuning the dual encoder on image–caption pairs, and evaluating a model on them.

* :mod:`~mmsearch.finetune.pairs` — reading pair files (CSV/TSV/JSONL), bad rows skipped;
* :mod:`~mmsearch.finetune.data` — the seeded split and the images decoded once;
* :mod:`~mmsearch.finetune.evaluation` — recall@k both ways, and :func:`evaluate`;
* :mod:`~mmsearch.finetune.train` — the training loop and :func:`finetune`.
"""

from .evaluation import evaluate, retrieval_metrics
from .train import FinetuneConfig, FinetuneResult, finetune

__all__ = ["FinetuneConfig", "FinetuneResult", "evaluate", "finetune", "retrieval_metrics"]
