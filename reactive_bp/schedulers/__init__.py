"""Schedulers: where and when work runs. Every time-based operator takes ``scheduler=``."""

from ._aio import AsyncioScheduler as AsyncioScheduler
from ._base import Cancellable as Cancellable
from ._base import Scheduler as Scheduler
from ._immediate import ImmediateScheduler as ImmediateScheduler
from ._immediate import TrampolineScheduler as TrampolineScheduler
from ._threads import RejectedExecutionError as RejectedExecutionError
from ._threads import ThreadPoolScheduler as ThreadPoolScheduler
from ._virtual import VirtualTimeScheduler as VirtualTimeScheduler

__all__ = [
    "AsyncioScheduler",
    "Cancellable",
    "ImmediateScheduler",
    "RejectedExecutionError",
    "Scheduler",
    "ThreadPoolScheduler",
    "TrampolineScheduler",
    "VirtualTimeScheduler",
]
