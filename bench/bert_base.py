"""A BERT-base-shaped model (12 layers, hidden 768, 12 heads, 110 M parameters), random
weights, nothing downloaded: the ``--model`` of ``bench/rebuild_bench.py``."""
from __future__ import annotations

import os

os.environ.setdefault("USE_TF", "0")

import torch  # noqa: E402
import transformers as T  # noqa: E402


def bert_base():
    torch.manual_seed(0)
    return T.BertModel(T.BertConfig()).eval()   # BertConfig's defaults are BERT-base's
