"""Helpers kept importable for third-party code (omegaml imports LocalExecutor from here)."""
from minibatch.executors import LocalExecutor

__all__ = ['LocalExecutor']
