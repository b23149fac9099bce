"""Keeps forked worker processes from hanging in parallel loops.

PyTorch's CPU builds run parallel loops on GNU OpenMP, whose worker threads do not survive
``fork()``: in a child forked after its parent ran a parallel region, the child's next parallel
region waits forever for threads that no longer exist (pytorch/pytorch#17199, #41197). torch's
own operators enter parallel regions only for large tensors, but fastseg's native CPU operators
run every call in one (even for a tiny image), so a ``multiprocessing.Pool`` worker (``fork``
is the default start method on Linux) running the CRF after its parent did would hang where
pydensecrf, single-threaded, works.

So, as PyTorch's DataLoader does for its workers (``torch.set_num_threads(1)``), a child forked
from a process that has more than one thread runs torch on one thread: the same results
(fastseg's output does not depend on the thread count), computed serially like pydensecrf's.
Which of a parent's threads are OpenMP's cannot be told from outside, so any other thread
counts; in practice every process that imported numpy has some (its BLAS starts them), so
forked children run on one thread. A parent with a single thread has no OpenMP workers to
lose, and its children keep their thread count. Workers started with the ``spawn`` or
``forkserver`` method are fresh processes and are not affected; they may use several threads.

The handler is registered when fastseg is imported: a worker forked before the parent imported
fastseg, from a parent that had run torch's parallel operators, is as exposed as torch itself
is there. Import fastseg before starting workers (at the top of the script, as usual).
"""
from __future__ import annotations

import os

import torch

_installed = False
_parent_thread_count = 1  # threads of the parent at its latest fork (set just before it)


def _thread_count() -> int:
    """Threads of this process (OpenMP's workers among them), or 2 when unknown."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 2


def _before_fork() -> None:
    global _parent_thread_count
    _parent_thread_count = _thread_count()


def _after_fork_in_child() -> None:
    if _parent_thread_count > 1 and torch.get_num_threads() > 1:
        torch.set_num_threads(1)


def uses_openmp() -> bool:
    """Whether torch's parallel loops run on OpenMP (GNU's, in torch's Linux wheels, does not
    survive fork; torch's native thread pool does)."""
    return "parallel backend: OpenMP" in torch.__config__.parallel_info()


def install() -> None:
    """Registers the fork handlers (once per process; a no-op where fork does not exist)."""
    global _installed
    if _installed or not hasattr(os, "register_at_fork") or not uses_openmp():
        return
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
    _installed = True
