"""Killable worker processes for per-clip jobs: a clip that hangs or crashes costs only itself.

    for job, result, failure in run_jobs(jobs, task, initializer, initargs, workers=2,
                                         timeout=120):
      ...  # result = task(*job), or failure: 'timeout after 120 s: ...' / 'worker died: ...'

Why not threads or `concurrent.futures.ProcessPoolExecutor`: a decoder stuck in FFmpeg's C code
cannot be interrupted from Python, and a pool can neither stop one task nor tell which of its
tasks killed a worker. Here every worker is a spawned process (torch and fork do not mix) with its
own pipe, running one job at a time, so the parent knows which job each worker holds and since
when. A job that runs longer than `timeout` seconds gets its worker killed (SIGKILL) and fails
with 'timeout after N s'; a worker that dies (a crash in a decoder, the out-of-memory killer)
fails its own job only. A new worker replaces either while jobs remain. The clock starts when a
job is handed to a worker that has finished `initializer` (loading models does not count).

On Linux a worker is killed when the process that started it dies (prctl PR_SET_PDEATHSIG), so
a killed build never leaves a worker behind; call `run_jobs` from the main thread (the signal
follows the starting thread).

For a caller that hands out jobs one at a time from any thread (a Beam DoFn, preprocessing/
beam_build.py), `JobRunner` keeps one such worker: `runner.run(job)` -> (result, failure) with
the same timeouts and failures; its worker is started from a thread of its own that lives as long
as the worker, so the worker dies with the process, never with the calling thread.
"""
from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import threading
import time
from multiprocessing import connection
from typing import Any, Callable, Iterator, Sequence

_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent_pid: int) -> None:
  """Asks Linux to SIGKILL this process when its parent dies (see the module docstring)."""
  if sys.platform.startswith("linux"):
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
  if os.getppid() != parent_pid:  # The parent died before prctl took effect.
    os._exit(1)


def _serve(conn: connection.Connection, parent_pid: int, initializer: Callable, initargs: tuple,
           task: Callable) -> None:
  """A worker: initialise, say so, then run one job per message until the pipe closes."""
  _die_with_parent(parent_pid)
  initializer(*initargs)
  conn.send("ready")
  while True:
    try:
      job = conn.recv()
    except EOFError:  # The parent is done.
      return
    conn.send(task(*job))


class _Worker:
  """One worker process, its pipe, and the job it holds (None when idle)."""

  def __init__(self, context, initializer: Callable, initargs: tuple, task: Callable):
    self.conn, child = context.Pipe()
    self.process = context.Process(target=_serve,
                                   args=(child, os.getpid(), initializer, initargs, task))
    self.process.start()
    child.close()
    self.ready, self.job, self.deadline = False, None, float("inf")

  def give(self, job: tuple, timeout: float | None) -> None:
    self.job = job
    self.deadline = time.monotonic() + timeout if timeout else float("inf")
    try:
      self.conn.send(job)
    except BrokenPipeError:  # It has just died: `failure` reports the job.
      pass

  def receive(self) -> tuple[bool, Any]:
    """(True, message) when the worker sent one; (False, None) when it has not (or died)."""
    if not self.conn.poll():
      return False, None
    try:
      return True, self.conn.recv()
    except EOFError:  # Its end of the pipe closed: it died.
      return False, None

  def failure(self, timeout: float | None) -> str | None:
    """Why this worker must go (it died, or its job ran out of time), or None."""
    if not self.process.is_alive():
      return (f"worker died: exit code {self.process.exitcode} (a crash in a decoder, or out of "
              f"memory); rerun the build to retry")
    if time.monotonic() >= self.deadline:
      return f"timeout after {timeout:g} s: the worker was killed"
    return None

  def stop(self) -> None:
    self.process.kill()
    self.process.join()
    self.conn.close()


def run_jobs(jobs: Sequence[tuple], task: Callable, initializer: Callable, initargs: tuple, *,
             workers: int, timeout: float | None) -> Iterator[tuple[tuple, Any, str | None]]:
  """Runs `task(*job)` for every job in `workers` processes; yields (job, result, failure).

  `task` and `initializer` must be importable module-level functions and `task` must not raise
  (an exception ends its worker: the job is reported as 'worker died'). timeout: seconds per job,
  None or 0 for no limit. Jobs start in the given order; results come as they finish.
  """
  context = multiprocessing.get_context("spawn")
  pending = list(reversed(jobs))
  pool: list[_Worker] = []
  try:
    while pending or any(w.job is not None for w in pool):
      busy = sum(w.job is not None for w in pool)
      while len(pool) < min(workers, busy + len(pending)):
        pool.append(_Worker(context, initializer, initargs, task))
      for worker in pool:
        if worker.ready and worker.job is None and pending:
          worker.give(pending.pop(), timeout)
      wait = min(w.deadline for w in pool) - time.monotonic()
      connection.wait([w.conn for w in pool] + [w.process.sentinel for w in pool],
                      None if wait == float("inf") else max(0.0, wait))
      for worker in list(pool):
        received, message = worker.receive()
        if received and not worker.ready:  # The first message says the worker is ready.
          worker.ready = True
        elif received:
          yield worker.job, message, None
          worker.job, worker.deadline = None, float("inf")
        elif failure := worker.failure(timeout):
          worker.stop()
          pool.remove(worker)
          if not worker.ready:
            raise RuntimeError(f"a worker process failed to start (exit code "
                               f"{worker.process.exitcode}); its error is printed above")
          if worker.job is not None:
            yield worker.job, None, failure
  finally:
    for worker in pool:
      worker.stop()


class JobRunner:
  """One killable worker process (initialised once) running `task(*job)` for jobs handed to
  `run` one at a time, with `run_jobs`'s timeout and failure semantics; `close` ends it."""

  def __init__(self, task: Callable, initializer: Callable, initargs: tuple, *,
               timeout: float | None):
    self._args = (initializer, initargs, task)
    self._timeout = timeout
    self._worker: _Worker | None = None
    self._release = threading.Event()  # Set: the keeper thread of the current worker ends.

  def start(self) -> None:
    """Starts the worker (if it is not running) and waits until it has initialised."""
    if self._worker is not None and self._worker.process.is_alive():
      return
    self.close()
    made: list[_Worker] = []
    self._release = threading.Event()
    ready = threading.Event()

    def keep(release: threading.Event) -> None:  # PR_SET_PDEATHSIG follows this thread.
      made.append(_Worker(multiprocessing.get_context("spawn"), *self._args))
      ready.set()
      release.wait()

    threading.Thread(target=keep, args=(self._release,), daemon=True,
                     name="job-runner-keeper").start()
    ready.wait()
    worker = self._worker = made[0]
    while not worker.ready:
      connection.wait([worker.conn, worker.process.sentinel])
      received, _ = worker.receive()
      if received:
        worker.ready = True
      elif not worker.process.is_alive():
        self.close()
        raise RuntimeError(f"a worker process failed to start (exit code "
                           f"{worker.process.exitcode}); its error is printed above")

  def run(self, job: tuple) -> tuple[Any, str | None]:
    """(task(*job), None), or (None, failure) when the job timed out or its worker died."""
    self.start()
    worker = self._worker
    worker.give(job, self._timeout)
    while True:
      wait = worker.deadline - time.monotonic()
      connection.wait([worker.conn, worker.process.sentinel],
                      None if wait == float("inf") else max(0.0, wait))
      received, message = worker.receive()
      if received:
        worker.job, worker.deadline = None, float("inf")
        return message, None
      if failure := worker.failure(self._timeout):
        self.close()
        return None, failure

  def close(self) -> None:
    if self._worker is not None:
      self._worker.stop()
      self._worker = None
    self._release.set()
