"""What follows a delivery, once the job's files are in place: the channel's latest slot, the OBS
input that shows it, and the delivery hooks. Driven by the supervisor's loop (``tick``), which finds
every delivery not followed up yet in the journal, so a crash between a delivery and its follow-up
is made good after the restart; the plan of a delivery's hooks is committed once, with a marker
that it was followed up, and the hooks themselves run in ``HookRunner``'s threads.

Nothing here can fail or hold up a job: a slot that cannot be written, or an OBS that does not
answer, is logged, and OBS is driven from its own thread.
"""

from __future__ import annotations

import time

from loguru import logger

from fploopd.daemon import hookstore
from fploopd.daemon.crash import crashpoint
from fploopd.daemon.hooks import HookRunner
from fploopd.daemon.hooksettings import named_hooks
from fploopd.daemon.journal import Job, JobState, Journal
from fploopd.daemon.latest import channel_of, clip_files, update_latest
from fploopd.daemon.layout import Layout
from fploopd.daemon.obs import ObsUpdater
from fploopd.daemon.settings import Settings

RETRY_S = 30.0


class FollowUp:
    def __init__(self, settings: Settings, layout: Layout) -> None:
        self.layout = layout
        self.hooks = named_hooks(settings.hooks)
        self.obs_inputs = settings.obs.inputs
        self.runner = HookRunner(layout, self.hooks, settings.journal)
        self.obs = ObsUpdater(settings.obs) if settings.obs.enabled else None
        self.retry_at: dict[str, float] = {}  # jobs whose follow-up failed (a full disk): not before then
        self.shown: dict[str, float] = {}  # channel -> delivery time of the loop its slot and OBS show

    def start(self) -> None:
        self.runner.start()  # also when no hook is configured: it settles runs left from before
        if self.obs is not None:
            self.obs.start()

    def close(self) -> None:
        self.runner.close()
        if self.obs is not None:
            self.obs.close()

    def busy(self, journal: Journal) -> bool:
        """Hook runs still to do, or an OBS update still trying (``run --once`` waits for them)."""
        return hookstore.pending_count(journal) > 0 or (self.obs is not None and self.obs.busy())

    def tick(self, journal: Journal) -> None:
        now = time.monotonic()
        for job in hookstore.unplanned(journal):
            if self.retry_at.get(job.id, 0.0) > now:
                continue
            with logger.contextualize(job=job.id):
                try:
                    self._follow(job, journal)
                except Exception as exc:  # noqa: BLE001 - one job's follow-up must not stop the loop
                    logger.opt(exception=not isinstance(exc, OSError)).error(
                        "following up the delivery of {} failed: {}; trying again in {:.0f} s", job.name, exc, RETRY_S
                    )
                    self.retry_at[job.id] = now + RETRY_S

    def _follow(self, job: Job, journal: Journal) -> None:
        channel = channel_of(job)
        newest = job.delivered_at is not None and job.delivered_at >= self.shown.get(channel or "", 0.0)
        if job.state is JobState.DONE and channel is not None and newest:  # a late follow-up never shows an older loop
            self.shown[channel] = job.delivered_at or 0.0
            try:
                update_latest(self.layout, job)
                self._show_in_obs(job, channel)
            except Exception as exc:  # noqa: BLE001 - the delivery stands; only the slot or OBS is behind
                logger.opt(exception=not isinstance(exc, OSError)).error(
                    "outbox/latest/{} or OBS could not be updated with {}: {}", channel, job.name, exc
                )
        hooks = [name for name, hook in self.hooks.items() if hook.matches(job.state.value, job.pipeline, channel)]
        hookstore.plan_round(journal, job, hooks)
        crashpoint("hooks:planned")
        if hooks:
            self.runner.wake.set()

    def _show_in_obs(self, job: Job, channel: str | None) -> None:
        if self.obs is None or channel not in self.obs_inputs:
            return
        files = clip_files(self.layout, job)
        if files:  # the job's own file: the next delivery replaces the slot, never this one
            self.obs.show(self.obs_inputs[channel], next(iter(files.values())), job.name)
