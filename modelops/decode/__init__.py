"""The co-decoder: several causal LMs in lock-step, one KV cache each, one fusion rule (docs/methods.md §2)."""

from modelops.decode.codecoder import CoDecoder
from modelops.decode.engine import FusionRule
from modelops.decode.processor import FusedLogitsProcessor
from modelops.decode.sampling import SamplingConfig
from modelops.decode.search import SearchResult, best_of_n, chunk_beam_search
from modelops.decode.speculative import SpeculativeStats, speculative_generate
from modelops.decode.types import Generation

__all__ = [
    "CoDecoder",
    "FusedLogitsProcessor",
    "FusionRule",
    "Generation",
    "SamplingConfig",
    "SearchResult",
    "SpeculativeStats",
    "best_of_n",
    "chunk_beam_search",
    "speculative_generate",
]
