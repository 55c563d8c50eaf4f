"""Prompt drift: how far a window of production prompts lies from the prompts an adapter was
trained on.

At training time the trainer stores a reference with the adapter (`drift_reference.json`): the
embeddings (all-MiniLM-L6-v2, `trainer.embeddings`) of up to SAMPLE training prompts, their
centroid, and the prompts' lengths in characters. A window of captured prompts is compared with
it by three statistics (`drift`):
  - the cosine distance between the two centroids: a shift of the mean topic, cheap to read;
  - the kernel two-sample test (MMD, Gretton et al. 2012) with a Gaussian kernel at the median
    pairwise distance, its p-value by permutation: it detects any difference of the two
    distributions in embedding space, not only of their means (a window that mixes the training
    topics with a new one can keep the centroid and still fail it), and the permutation
    p-value is exact for the small windows production gives, with no asymptotics assumed;
  - the Kolmogorov-Smirnov statistic of the prompt lengths: longer or shorter prompts than
    trained on (a different template, pasted documents) whatever their topic.
Pure apart from `write_reference` (which embeds and writes) and `read_reference`.
"""

import json
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats  # type: ignore[import-untyped]

from trainer.files import write_atomic

REFERENCE_FILE = "drift_reference.json"
SAMPLE = 128
"""Training prompts embedded for the reference (a seeded random sample)."""
MAX_LENGTHS = 2000
PERMUTATIONS = 200


def prompt_text(turns: Iterable[tuple[str, str]]) -> str:
    """What of a conversation counts as its prompt: the user's turns, (role, content) pairs."""
    return "\n".join(content for role, content in turns if role == "user")


@dataclass(frozen=True)
class Reference:
    """The training prompts' statistics an adapter carries."""

    embedding_model: str
    prompts: int
    """Training prompts in all (the sample and lengths are drawn from them)."""
    sample: np.ndarray
    """Embeddings of the sample, one L2-normalized row per prompt."""
    lengths: np.ndarray
    """Lengths in characters."""

    @property
    def centroid(self) -> np.ndarray:
        """The mean embedding of the sample."""
        return np.asarray(self.sample.mean(axis=0))

    def to_json(self) -> dict[str, Any]:
        """The reference file's content."""
        return {
            "embedding_model": self.embedding_model,
            "prompts": self.prompts,
            "sample": np.round(self.sample, 5).tolist(),
            "lengths": self.lengths.astype(int).tolist(),
        }

    @classmethod
    def from_json(cls, data: Any) -> "Reference":
        """Raises:
        ValueError: not a reference this module wrote."""
        try:
            sample = np.asarray(data["sample"], dtype=np.float32)
            lengths = np.asarray(data["lengths"], dtype=np.float32)
            reference = cls(str(data["embedding_model"]), int(data["prompts"]), sample, lengths)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{REFERENCE_FILE}: not a drift reference ({exc})") from None
        if sample.ndim != 2 or not len(sample) or lengths.ndim != 1 or not len(lengths):
            raise ValueError(f"{REFERENCE_FILE}: an empty or misshapen sample")
        return reference


def reference_of(prompts: Sequence[str], embed: Any, model: str, seed: int = 0) -> Reference:
    """The reference of `prompts`, embedding a seeded sample with `embed` (texts -> rows)."""
    chosen = random.Random(seed).sample(list(prompts), min(SAMPLE, len(prompts)))
    lengths = random.Random(seed).sample([len(p) for p in prompts], min(MAX_LENGTHS, len(prompts)))
    return Reference(
        model, len(prompts), np.asarray(embed(chosen), dtype=np.float32), np.asarray(lengths)
    )


def write_reference(prompts: Sequence[str], output_dir: Path) -> Path:
    """Embeds a sample of the training prompts and writes the adapter's reference, atomically
    (a reader sees no file or the whole one)."""
    from trainer.embeddings import EMBEDDING_MODEL, embed_rows

    reference = reference_of(prompts, embed_rows, EMBEDDING_MODEL)
    path = output_dir / REFERENCE_FILE
    write_atomic(path, json.dumps(reference.to_json()))
    return path


def read_reference(adapter_dir: Path) -> Reference | None:
    """The adapter's reference; None when it has none (trained elsewhere, or loaded by path).

    Raises:
        ValueError: a reference file that is not one.
    """
    path = adapter_dir / REFERENCE_FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{REFERENCE_FILE}: unreadable ({exc})") from None
    return Reference.from_json(data)


@dataclass(frozen=True)
class Drift:
    """A window of prompts against a reference."""

    prompts: int
    centroid_distance: float
    """1 - cosine similarity of the two centroids, in [0, 2]."""
    mmd: float
    """The unbiased squared MMD estimate (0 when both come from one distribution)."""
    mmd_p_value: float
    """The permutation p-value of the MMD test: small when the window differs."""
    length_ks: float
    """The KS statistic of the prompt lengths, in [0, 1]."""


def _cosine_distance(a: np.ndarray, b: np.ndarray) -> float:
    return float(1.0 - a @ b / max(float(np.linalg.norm(a) * np.linalg.norm(b)), 1e-12))


def _mmd2(kernel: np.ndarray, first: np.ndarray) -> float:
    """The unbiased MMD² of the split of the pooled `kernel` matrix into `first` (a mask) and
    the rest."""
    second = ~first
    m, n = int(first.sum()), int(second.sum())
    xx = kernel[np.ix_(first, first)]
    yy = kernel[np.ix_(second, second)]
    xy = kernel[np.ix_(first, second)]
    within = (xx.sum() - np.trace(xx)) / (m * (m - 1)) + (yy.sum() - np.trace(yy)) / (n * (n - 1))
    return float(within - 2 * xy.mean())


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """The two-sample Kolmogorov-Smirnov statistic: the largest gap of the empirical CDFs."""
    return float(stats.ks_2samp(a, b).statistic)


def drift(
    reference: Reference,
    embeddings: np.ndarray,
    lengths: Sequence[int],
    permutations: int = PERMUTATIONS,
    seed: int = 0,
) -> Drift:
    """The window (its prompts' L2-normalized `embeddings` and `lengths`, at least 2) against
    `reference`."""
    window = np.asarray(embeddings, dtype=np.float32)
    pooled = np.concatenate([reference.sample, window])
    squared = np.maximum(
        (pooled**2).sum(1)[:, None] + (pooled**2).sum(1)[None, :] - 2 * pooled @ pooled.T, 0.0
    )
    bandwidth = float(np.median(squared[np.triu_indices(len(pooled), 1)])) or 1.0
    kernel = np.exp(-squared / bandwidth)
    first = np.zeros(len(pooled), dtype=bool)
    first[: len(reference.sample)] = True
    observed = _mmd2(kernel, first)
    rng = np.random.default_rng(seed)
    above = sum(_mmd2(kernel, rng.permutation(first)) >= observed for _ in range(permutations))
    return Drift(
        prompts=len(window),
        centroid_distance=_cosine_distance(reference.centroid, window.mean(axis=0)),
        mmd=observed,
        mmd_p_value=(1 + above) / (1 + permutations),
        length_ks=ks_statistic(reference.lengths, np.asarray(lengths, dtype=np.float32)),
    )
