"""The co-decoder: several causal LMs in lock-step, one KV cache each, one fusion rule (METHODS.md §2)."""

from modelops.decode.engine import CoDecoder, FusionRule, Generation
from modelops.decode.processor import FusedLogitsProcessor
from modelops.decode.sampling import SamplingConfig
from modelops.decode.search import SearchResult, best_of_n, chunk_beam_search
from modelops.decode.speculative import SpeculativeStats, speculative_generate

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
