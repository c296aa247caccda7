"""Many sequences at once: continuous batching over one model (see engine.py)."""

from .engine import Engine, EngineConfig, EngineStats
from .request import EngineStoppedError, GenerationRequest, QueueFullError, SequenceEvent

__all__ = ["Engine", "EngineConfig", "EngineStats", "EngineStoppedError", "GenerationRequest", "QueueFullError",
           "SequenceEvent"]
