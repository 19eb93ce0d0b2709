"""How many intra-op threads torch uses for a run: chosen from the work's size and the machine's load.

torch splits a large operation between its intra-op threads (OpenMP), and at the end of every such
operation the threads wait for each other, spinning on a core rather than sleeping. On cores that
nothing else wants, that costs microseconds. On cores shared with other busy processes, a thread
that the operating system has paused keeps its partners spinning until it runs again, a scheduler
time slice of milliseconds, and that happens at every parallel operation. On 2 cores, MAML on sine
waves (about 30 such operations per meta-iteration) trained 4 times as long on two threads as on
one beside two busy processes, 7 times beside four, and 16 times or more beside other people's
jobs; Prototypical Networks on Omniglot 1.3 times (docs/engine.md, "Threads under load";
`python benchmarks/load.py`).

So when the `threads` key is unset, a run picks its intra-op threads itself:

- one per task-thread worker (`metalab.parallel`), which already puts every core to work;
- one for small models (no convolution and fewer than `SMALL_PARAMETERS` parameters, such as the
  sine MLP), whose operations are too small for a second thread to pay for its waiting;
- otherwise the cores this process may use (shared among the processes of a torchrun launch),
  less those that other processes keep busy, at least one. During training the load is read again
  between iterations (`ThreadGovernor`), and the count follows it once two 2-second windows in a
  row agree.

Two runs whose thread counts differ may differ in the last bits of their results (a reduction split
between threads sums in another order); a `threads` value of your own fixes the count, and with it
the bits. With torch 2.13 on the CPU, the sine MLP trains to the same bits on one and two threads.

The load is read from Linux's `/proc/loadavg` (the runnable threads of the whole machine, less this
process's own), averaged over a few samples and scaled to the share of the machine's cores that this
process may use. Where it cannot be read (not Linux), a run takes the cores, as torch would.
"""

from __future__ import annotations

import contextlib
import os
import time
from typing import Callable, Iterator

import torch
from torch import nn

from .parallel import available_cores

__all__ = [
    "SMALL_PARAMETERS",
    "ThreadGovernor",
    "background_load",
    "choose_threads",
    "free_threads",
    "is_small_model",
    "load_reading",
    "threads_for",
]

# On an idle 2-core machine, a second thread made sine-wave MAML with MLPs of 1,761 to 10,401
# parameters (hidden widths 40 to 100) 0.87-1.10x as fast end to end, and with 16,897 and 40,801
# (128 and 200) 1.24x and 1.46x (docs/engine.md, "Threads under load"). Below this size a second
# thread gains too little to risk its waiting on shared cores.
SMALL_PARAMETERS = 15_000
# A core counts as free while other processes keep it busy less than half the time.
_FREE_SLACK = 0.5


def is_small_model(module: nn.Module) -> bool:
    """Whether `module` is too small for intra-op threads to help: no convolution and fewer than
    `SMALL_PARAMETERS` parameters (buffers not counted)."""
    if any(isinstance(m, nn.modules.conv._ConvNd) for m in module.modules()):
        return False
    return sum(p.numel() for p in module.parameters()) < SMALL_PARAMETERS


def runnable_threads() -> int | None:
    """Runnable threads on the whole machine right now (Linux), this one included."""
    try:
        with open("/proc/loadavg") as f:
            return int(f.read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        return None


def _own_runnable_threads() -> int:
    """Threads of this process that are running or waiting for a core right now."""
    count = 0
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return 1
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as f:
                stat = f.read()
        except OSError:  # the thread ended
            continue
        count += stat[stat.rindex(")") + 2 : stat.rindex(")") + 3] == "R"
    return max(count, 1)  # the thread reading


def load_reading() -> float | None:
    """One reading of the load that other processes put on this process's cores: the machine's
    runnable threads less this process's own, scaled by the share of the machine's cores this
    process may use (2.0 on 2 cores: both taken; more: a queue). None where it cannot be read."""
    own = _own_runnable_threads()  # first: between two operations, this process's threads only sleep
    total = runnable_threads()
    if total is None:
        return None
    share = available_cores() / (os.cpu_count() or available_cores())
    return max(0, total - own) * min(1.0, share)


def background_load(samples: int = 20, gap: float = 0.002, read: Callable[[], float | None] | None = None):
    """The mean of `samples` load readings (`load_reading`) `gap` seconds apart; None if unreadable."""
    read = read or load_reading
    readings = []
    for i in range(samples):
        if i:
            time.sleep(gap)
        value = read()
        if value is None:
            return None
        readings.append(value)
    return sum(readings) / len(readings)


def free_threads(cores: int, ceiling: int, busy: float | None) -> int:
    """The threads for `cores` cores of which `busy` are taken by others: the free cores rounded to the
    nearest whole one (a core busy less than half the time counts as free), between 1 and `ceiling`."""
    if busy is None:
        return max(1, ceiling)
    return max(1, min(ceiling, int(cores - busy + _FREE_SLACK)))


def choose_threads(
    *,
    explicit: int | None,
    small: bool,
    workers: int,
    cores: int,
    world: int = 1,
    busy: float | None = None,
) -> int:
    """Intra-op threads for a run (see the module docstring).

    Args:
        explicit: the `threads` config key (None: choose).
        small: whether the model is too small for intra-op threads (`is_small_model`).
        workers: task-thread workers (`metalab.run.task_workers`); each runs on one intra-op thread.
        cores: the cores this process may use.
        world: processes of this launch on the machine's cores (torchrun), sharing them.
        busy: cores that other processes keep busy (`background_load`), None if unknown.
    """
    if explicit:
        return explicit
    if workers > 1 or small:
        return 1
    return free_threads(cores, max(1, cores // world), busy)


class ThreadGovernor:
    """Follows the load during a run. It reads the load at most every `gap` seconds, when `follow` is
    called between two iterations (no extra pause), and every `every` seconds turns the mean of those
    readings into a thread count (`free_threads`); it sets that count once `patience` such windows
    in a row have agreed on it, so that a burst of load does not move it.

    Args:
        ceiling: the most threads (the cores per process).
        cores: the cores this process may use.
        every: seconds per window of readings.
        gap: the least seconds between two readings.
        patience: windows in a row that must agree before the count changes.
        read, clock, set_threads: one load reading (`load_reading`), the clock and the setter of
            torch's threads (replaceable in tests).
    """

    def __init__(
        self,
        ceiling: int,
        cores: int,
        *,
        every: float = 2.0,
        gap: float = 0.1,
        patience: int = 2,
        read: Callable[[], float | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        set_threads: Callable[[int], None] | None = None,
    ) -> None:
        self.ceiling, self.cores, self.every, self.gap, self.patience = ceiling, cores, every, gap, patience
        self._read = read or (lambda: load_reading())
        self._set = set_threads or torch.set_num_threads
        self._clock = clock
        self.threads = free_threads(cores, ceiling, background_load(read=self._read))  # the start: a burst
        self._set(self.threads)
        now = clock()
        self._window_end, self._last_read, self._readings = now + every, now, []
        self._pending, self._agreeing = self.threads, 0
        self.changes = 0

    def follow(self) -> int:
        """Call once per iteration: reads the load when a reading is due, decides at the end of a
        window; returns the threads in use."""
        now = self._clock()
        if now - self._last_read >= self.gap:
            self._last_read = now
            value = self._read()
            if value is not None:
                self._readings.append(value)
        if now < self._window_end:
            return self.threads
        self._window_end = now + self.every
        if not self._readings:
            return self.threads
        target = free_threads(self.cores, self.ceiling, sum(self._readings) / len(self._readings))
        self._readings = []
        if target == self.threads:
            self._agreeing = 0
            return self.threads
        self._agreeing = self._agreeing + 1 if target == self._pending else 1
        self._pending = target
        if self._agreeing >= self.patience:
            self.threads, self._agreeing = target, 0
            self._set(target)
            self.changes += 1
        return self.threads


def threads_for_learner(
    explicit: int | None, learner: nn.Module, *, measure: Callable[[], float | None] | None = None
) -> int:
    """The intra-op threads for evaluating `learner` in one process: `explicit` if given, else one for
    a small model, else on the CPU the free cores (the load read once), elsewhere torch's setting."""
    if explicit:
        return explicit
    if is_small_model(learner):
        return 1
    if any(p.device.type != "cpu" for p in learner.parameters()):
        return torch.get_num_threads()
    busy = measure() if measure is not None else background_load()
    return choose_threads(explicit=None, small=False, workers=1, cores=available_cores(), busy=busy)


@contextlib.contextmanager
def threads_for(explicit: int | None, learner: nn.Module) -> Iterator[int]:
    """Evaluation with `learner` on the threads a run would choose (`threads_for_learner`); torch's
    previous setting is restored afterwards."""
    before = torch.get_num_threads()
    threads = threads_for_learner(explicit, learner)
    torch.set_num_threads(threads)
    try:
        yield threads
    finally:
        torch.set_num_threads(before)
