"""Optimisers driven by rank 0: the driver loop (logging, convergence, checkpoints via a
callback) is written once in :mod:`.driver`; each method is a function of the evaluation."""

from .driver import Best, Interrupted, LogWriter, NonFiniteLoss, Result, Stats, converged, run_optimizer

__all__ = ["Best", "Interrupted", "LogWriter", "NonFiniteLoss", "Result", "Stats", "converged", "run_optimizer"]
