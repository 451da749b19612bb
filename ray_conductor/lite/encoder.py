"""The frozen question encoder: a pool's fitted `QuestionFeaturizer` (which part of a prompt
to read) and all-MiniLM-L6-v2 (the sentence encoder shipped inside a PyPI wheel), both from
`ray_conductor.features`. Batches of pool questions go through the on-disk cache; served
questions are encoded directly (one cache file per served query would only fill the disk)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ray_conductor.features import QuestionFeaturizer, embed_questions

EMBED_MODEL = "sentence-transformers/all-MiniLM-L6-v2"


def fit_featurizer(texts: Sequence[str]) -> QuestionFeaturizer:
    """Learn the openings and endings a pool's prompts share (from its train questions)."""
    return QuestionFeaturizer.fit(list(texts))


def embed(texts: Sequence[str], featurizer: QuestionFeaturizer, *, cache: bool = False
          ) -> np.ndarray:
    """[N, 384] unit vectors of what tells the questions apart."""
    return np.asarray(embed_questions(list(texts), featurizer, cache=cache), dtype=np.float32)
