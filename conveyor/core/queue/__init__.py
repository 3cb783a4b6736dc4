"""Queue types. Only classic queues for now; streams later share the same contract."""

from conveyor.core.queue.classic import Queue

__all__ = ["Queue"]
