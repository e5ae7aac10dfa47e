"""Step timing shared by the training benchmarks (standard library only: the Keras reference imports it too).

A step's wall time is kept together with the CPU (in cores) that other processes used meanwhile, so that steps
disturbed by the shared machine's other jobs can be repeated and left out.
"""

from __future__ import annotations

import os
import statistics
import time

MAX_OTHER_LOAD = 0.25  # cores used by other processes above which a step is repeated


class StepClock:
    """Wall time of a step and the CPU (in cores) that other processes used meanwhile."""

    def __init__(self) -> None:
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.walls: list[float] = []
        self.others: list[float] = []
        self.first = 0.0

    def _busy(self) -> float:
        with open("/proc/stat") as handle:
            v = [int(a) for a in handle.readline().split()[1:9]]
        return (sum(v) - v[3] - v[4]) / self.ticks  # all CPUs, seconds not idle

    def start(self) -> None:
        times = os.times()
        self.t0, self.busy0, self.own0 = time.perf_counter(), self._busy(), times.user + times.system

    def stop(self, timed: bool) -> None:
        wall = time.perf_counter() - self.t0
        times = os.times()
        other = max(0.0, (self._busy() - self.busy0 - (times.user + times.system - self.own0)) / wall)
        if timed:
            self.walls.append(wall)
            self.others.append(other)
        elif not self.first:
            self.first = wall  # includes one-off work: oneDNN primitive creation, torch.compile, tf.function tracing

    def enough(self, steps: int) -> bool:
        clean = sum(o <= MAX_OTHER_LOAD for o in self.others)
        return clean >= steps or len(self.walls) >= 2 * steps

    def result(self, batch: int, steps: int) -> dict:
        kept = [(w, o) for w, o in zip(self.walls, self.others) if o <= MAX_OTHER_LOAD]
        contended = len(kept) < steps
        if contended:  # not enough quiet steps: report them all, flagged
            kept = list(zip(self.walls, self.others))
        walls = [w for w, _ in kept]
        median = statistics.median(walls)
        return {"images_per_s": round(batch / median, 3), "step_s": round(median, 4),
                "step_s_min": round(min(walls), 4), "steps": len(kept), "steps_run": len(self.walls),
                "other_load": round(statistics.fmean(o for _, o in kept), 3), "contended": contended,
                "first_step_s": round(self.first, 2)}
