"""A wall-clock budget for a training run: measure the step time during warm-up, then fit the number of
iterations (and the LR schedule with it) to the time left.

:class:`TimeBudget` is a detectron2 hook; the trainer it runs in must offer ``set_max_iter(n)``
(:class:`d2reg.demo.DemoTrainer`), which shortens the run and rescales the schedule.
"""
from __future__ import annotations

import math
import time
from typing import Callable, List, Optional, Sequence

from detectron2.engine import HookBase

__all__ = ["TimeBudget", "cpu_model", "plan_iterations", "scale_steps"]


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine() or "unknown CPU"


def plan_iterations(done: int, step_time: float, seconds_left: float, max_iter: int) -> int:
    """Iterations a run should have in all: the ``done`` ones plus as many steps of ``step_time``
    seconds as fit in ``seconds_left``; never more than ``max_iter``, never fewer than ``done``."""
    more = max(0, math.floor(seconds_left / step_time)) if step_time > 0 else max_iter
    return max(done, min(max_iter, done + more))


def scale_steps(steps: Sequence[int], max_iter: int, new_max_iter: int) -> List[int]:
    """LR milestones ``steps`` of a ``max_iter`` schedule at the same fractions of ``new_max_iter``."""
    return [max(1, round(s * new_max_iter / max_iter)) for s in steps]


class TimeBudget(HookBase):
    """Fit training into the time left before ``end_by`` (a ``time.time()`` value).

    After iteration ``first_plan`` the mean step time since iteration ``measure_from`` (steps before it
    carry start-up costs) gives the plan: as many iterations as fit before ``end_by`` minus what comes
    after training (``reserve_steps`` step times plus ``reserve_s`` seconds: evaluation, the picture),
    capped by the trainer's ``max_iter`` (the tuned recipe). Every ``replan_period`` iterations the plan
    is re-made from the recent step time, so a machine that slows down or speeds up (other load) still
    finishes on time: it may grow while fewer than ``replan_until`` of the planned iterations are done
    (before the LR drop), and shrink at any time. A plan is applied through ``trainer.set_max_iter``.
    """

    def __init__(self, end_by: float, reserve_steps: float = 0.0, reserve_s: float = 0.0, measure_from: int = 3,
                 first_plan: int = 10, replan_period: int = 20, replan_until: float = 0.7,
                 log: Optional[Callable[[str], None]] = print):
        if not 0 <= measure_from < first_plan:
            raise ValueError(f"need 0 <= measure_from < first_plan, got {measure_from}, {first_plan}.")
        self.end_by = end_by
        self.reserve_steps, self.reserve_s = reserve_steps, reserve_s
        self.measure_from, self.first_plan = measure_from, first_plan
        self.replan_period, self.replan_until = replan_period, replan_until
        self._log = log or (lambda msg: None)
        self.tuned_max_iter: Optional[int] = None  # the trainer's max_iter before any plan
        self.step_time: Optional[float] = None  # seconds per iteration, last measured
        self.plans: List[int] = []  # every plan made, in order
        self._stamps = {}  # iteration -> time.time() after it

    @property
    def planned_max_iter(self) -> Optional[int]:
        return self.plans[-1] if self.plans else None

    def before_train(self):
        self.tuned_max_iter = self.trainer.max_iter
        self._stamps.clear()
        self.plans.clear()

    def after_step(self):
        it, now = self.trainer.iter, time.time()
        self._stamps[it] = now
        done = it + 1
        if done < self.first_plan:
            return
        first = not self.plans
        if not first and (done - self.first_plan) % self.replan_period:
            return
        since = self.measure_from if first else max(self.measure_from, it - self.replan_period)
        step_time = (now - self._stamps[since]) / (it - since)
        left = self.end_by - now - self.reserve_steps * step_time - self.reserve_s
        n = plan_iterations(done, step_time, left, self.tuned_max_iter)
        if not first and (n == self.plans[-1] or (done >= self.replan_until * self.plans[-1] and n > self.plans[-1])):
            return  # late in the run (past the LR drop, or near it): only ever shorten
        self.step_time = step_time
        self.plans.append(n)
        if n != self.trainer.max_iter:
            self.trainer.set_max_iter(n)
        finish = now + (n - done) * self.step_time + self.reserve_steps * self.step_time + self.reserve_s
        cut = f" (budget: fewer than the tuned {self.tuned_max_iter})" if n < self.tuned_max_iter else ""
        self._log(
            f"[demo] {'plan' if first else 're-plan'} after {done} iterations: {self.step_time:.2f} s/it "
            f"-> {n} iterations{cut}, LR drop at {', '.join(map(str, self.trainer.lr_steps)) or '-'}; "
            f"training ends ~{time.strftime('%H:%M:%S', time.localtime(now + (n - done) * self.step_time))}, "
            f"finish (eval + picture) ~{time.strftime('%H:%M:%S', time.localtime(finish))}, "
            f"budget ends {time.strftime('%H:%M:%S', time.localtime(self.end_by))}"
        )
