"""Question features for the routers (kNN) and the lite conductor: which part of a prompt to
read (`QuestionFeaturizer`: the last user turn, without the openings and endings a pool's
prompts share, head and tail when still long), and the sentence encoder that turns it into a
unit vector (`embed_texts`, `embed_questions`: all-MiniLM-L6-v2, bf16 on CPUs with AMX,
cached on disk by text and precision).

A bottom floor: must not import Ray, `eval`, `rl`, `lite`, `serve` or any other
ray_conductor package but `errors`; torch and transformers only lazily, inside the encoder.
"""

from ray_conductor.features.embed import (PRECISIONS, default_precision, embed_questions,
                                          embed_texts, encode)
from ray_conductor.features.text import QuestionFeaturizer, last_user_turn, shared_openings

__all__ = ["PRECISIONS", "QuestionFeaturizer", "default_precision", "embed_questions",
           "embed_texts", "encode", "last_user_turn", "shared_openings"]
