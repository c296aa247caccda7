"""Many sequences at once: continuous batching over one model (see engine.py)."""

from .engine import Engine, EngineConfig, EngineStats
from .request import (EmbeddingRequest, EmbeddingResult, EngineStoppedError, GenerationRequest, QueueFullError,
                      SequenceEvent)

__all__ = ["EmbeddingRequest", "EmbeddingResult", "Engine", "EngineConfig", "EngineStats", "EngineStoppedError",
           "GenerationRequest", "QueueFullError", "SequenceEvent"]
