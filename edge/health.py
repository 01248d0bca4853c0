"""Is the pipeline moving? The daemon's judgement of its own stages, every main-loop tick.

A daemon can look alive (connected, heartbeats on time, watchdog fed) while no input moves:
a full state disk fails every commit, a decoder hangs, the outbox cannot be read. Each stage
is judged by what it does, not by whether its thread exists:

- store:     the worker's commits fail (a full disk, a damaged outbox);
- worker:    inputs fail unexpectedly before they are classified (e.g. outbox reads fail);
- classify:  one input has been decoding or classifying for longer than `stall_s`;
- publish:   connected, messages stored, yet nothing acknowledged for `stall_s`;
- inputs:    inputs handed over by their sources for longer than `stall_s` without an
             outcome while no input at all finished for `stall_s` (a long queue behind a
             busy worker is not stuck), and the worker is not just waiting for outbox room
             (backpressure from a broker outage is reported as outbox_full, and a restart
             would not help).

Any stuck stage makes the daemon `degraded`: an error event, the retained status, the
heartbeat's `health`, and no more watchdog notifications, so systemd restarts a daemon that
cannot heal itself. A stage that works again returns it to `online` by itself.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass
class Assessment:
    stuck: dict[str, str] = field(default_factory=dict)  # stage -> why
    waiting: int = 0  # inputs handed over and not yet released
    stuck_inputs: int = 0  # of those, waiting longer than stall_s
    oldest_s: float = 0.0

    @property
    def degraded(self) -> bool:
        return bool(self.stuck)

    @property
    def reason(self) -> str:
        return "; ".join(f"{stage}: {why}" for stage, why in sorted(self.stuck.items()))

    def to_dict(self) -> dict:
        return {"state": "degraded" if self.degraded else "ok", "stuck": dict(self.stuck),
                "inputs_waiting": self.waiting, "inputs_stuck": self.stuck_inputs,
                "oldest_input_s": round(self.oldest_s, 1)}


class HealthMonitor:
    def __init__(self, worker, publisher, outbox, stall_s: float):
        self.worker = worker
        self.publisher = publisher
        self.outbox = outbox
        self.stall_s = stall_s
        self._published = -1
        self._progress_at = time.monotonic()

    def assess(self) -> Assessment:
        now = time.monotonic()
        worker = self.worker
        stuck = {stage: f"{reason} (for {now - since:.0f} s)"
                 for stage, (reason, since) in worker.stage_problems().items()}
        busy_since = worker.busy_since
        if busy_since is not None and now - busy_since > self.stall_s:
            stuck["classify"] = f"one input has been decoding or classifying for {now - busy_since:.0f} s"
        stuck.update(self._publishing(now))
        assessment = Assessment(stuck=stuck, waiting=worker.open_inputs(),
                                stuck_inputs=worker.open_inputs(older_than_s=self.stall_s),
                                oldest_s=worker.oldest_open_s())
        idle_s = now - worker.progress_at
        # A long queue behind a busy worker is not stuck: only inputs waiting while nothing finishes.
        if assessment.stuck_inputs and not stuck and not worker.waiting_for_room and idle_s > self.stall_s:
            stuck["inputs"] = (f"{assessment.stuck_inputs} input(s) handed over more than {self.stall_s:.0f} s ago "
                               f"have no outcome, and none finished for {idle_s:.0f} s")
        return assessment

    def _publishing(self, now: float) -> dict[str, str]:
        published = self.publisher.published
        try:
            stored = self.outbox.count()
        except Exception as error:  # the outbox cannot be read: the store stage says so too
            return {"store": f"cannot read the outbox ({type(error).__name__}: {error})"}
        if published != self._published or stored == 0 or not self.publisher.connected:
            self._published, self._progress_at = published, now
            return {}
        if now - self._progress_at > self.stall_s:
            return {"publish": f"connected, {stored} message(s) stored, none acknowledged for "
                               f"{now - self._progress_at:.0f} s"}
        return {}
