"""`medge edge run`: sources -> worker -> durable outbox -> MQTT publisher, until signalled.

Threads: each source runs its own (watch loop, DICOM server, camera grabber), one worker
classifies inputs in arrival order, paho's network loop plus one publisher thread move the
outbox to the broker, and the main thread sends heartbeats and waits for SIGTERM/SIGINT.
Shutdown order is what loses nothing: stop taking input, finish what was handed over
(results land in the outbox), give the broker a moment to acknowledge, publish `offline`.
"""
from __future__ import annotations

import logging
import os
import resource
import signal
import sqlite3
import threading
import time

from . import sd_notify
from .config import EdgeConfig
from .errors import ConfigError
from .health import Assessment, HealthMonitor
from .outbox import Outbox, open_outbox
from .payloads import encode, heartbeat_payload, status_payload
from .pseudonym import Pseudonymizer, load_or_create_key
from .sources import build_sources, no_source_message

log = logging.getLogger("medge.edge.daemon")

DRAIN_S = 5.0  # how long a clean shutdown waits for the broker to acknowledge what is stored


def rss_mb() -> float:
    """Current resident set size (not the peak), from /proc where there is one."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 1e6
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def model_info(bundle, artifact) -> dict:
    return {"name": str(bundle.name), "version": str(bundle.version), "sha256": artifact.sha256,
            "format": artifact.format}


class EdgeDaemon:
    def __init__(self, config: EdgeConfig, classifier=None):
        from .bundle import load_bundle
        from .classify import Classifier

        if config.bundle is None and not config.fleet.enabled:
            raise ConfigError("bundle: no model bundle given (medge edge run BUNDLE, or bundle = ... in the config)")
        self.config = config
        self.worker = None
        self.sources = build_sources(config, on_event=self._source_event)
        if not self.sources:
            raise ConfigError(no_source_message())
        if classifier is None:
            if config.fleet.enabled:  # edge/fleet: the store's active bundle first, the configured one last
                from .fleet.controller import startup_bundle

                bundle = startup_bundle(config)
            else:
                bundle = load_bundle(config.bundle, trusted_keys=config.signature.trusted_keys)
            from .quiet import quiet_native_logs

            # No thread runs yet, so the runtime's own stderr lines (XNNPACK) can be hidden here.
            with quiet_native_logs(enabled=config.log.level != "DEBUG"):
                classifier = Classifier.for_config(bundle, config)
        self.classifier = classifier
        self.bundle = classifier.bundle
        self.model = model_info(self.bundle, classifier.artifact)
        self.stop_event = threading.Event()
        self.started = time.monotonic()
        self.outbox: Outbox | None = None
        self.health: HealthMonitor | None = None
        self.assessment = Assessment()
        self.guard = None
        self.pacs = None  # edge/pacs delivery, when pacs.cstore or pacs.stow is set
        self.publisher = None
        self.drift = None  # edge/drift.py, set up in run()
        self.fleet = None  # edge/fleet's controller, when [fleet] is configured

    def _source_event(self, level: str, kind: str, message: str, source: str | None = None) -> None:
        if self.worker is None:
            log.warning("%s: %s", kind, message)
        else:
            self.worker.event(level, kind, message, source=source)

    def _status(self, state: str, reason: str | None) -> dict:
        # Every `online` (the publisher sends one on each connect) tells the truth about the stages.
        if state == "online" and self.assessment.degraded:
            state, reason = "degraded", self.assessment.reason
        active = self._active()
        return status_payload(state=state, site=self.config.site, device=self.config.device, model=active.info,
                              sources=[source.name for source in self.sources], reason=reason,
                              signed_by=active.bundle.signed_by)

    def _active(self):
        """The model results come from now: the worker's, which the fleet controller may switch."""
        from .worker import ActiveModel

        if self.worker is not None:
            return self.worker.active
        return ActiveModel(classifier=self.classifier, bundle=self.bundle, info=self.model)

    # ------------------------------------------------------------------ running
    def run(self) -> int:
        from .comms import Publisher
        from .worker import Worker

        config = self.config
        try:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            self.outbox, rebuilt = open_outbox(config.outbox_path, config.state.outbox_max)
            key = load_or_create_key(config.pseudonym_key_path)
            pseudonymizer = Pseudonymizer(key)
            from .quarantine import CrashGuard

            self.guard = CrashGuard(config.state_dir / "in_progress", key)
            from .explain import explain
            from .pacs.delivery import build_delivery

            # The SR/SC's finding and heatmap come from the model that classified each input (the
            # fleet may switch it before the PACS writer thread gets to the job): see worker hook below.
            self.pacs = build_delivery(config, self.bundle, self._source_event,
                                       explainer=lambda classifier, model_input: explain(classifier,
                                                                                         model_input=model_input))
        except (OSError, sqlite3.Error) as error:  # one line, not a traceback
            raise ConfigError(f"state.dir: cannot use {config.state_dir} ({error})") from None
        self.publisher = Publisher(config, self.outbox, self._status)
        self.worker = Worker(classifier=self.classifier, bundle=self.bundle, outbox=self.outbox,
                             pseudonymizer=pseudonymizer, config=config, model=self.model,
                             notify=self.publisher.notify, dicom_outputs=self.pacs, guard=self.guard,
                             fallback=self._publish_directly)
        if self.pacs is not None:
            self.pacs.remember(self.worker.active)
            self.worker.observers.append(self.pacs.observe)
        self.health = HealthMonitor(self.worker, self.publisher, self.outbox, config.input.stall_s)
        if config.drift.enabled:  # edge/drift.py: the heartbeat's `drift` figures
            from .drift import DriftMonitor

            self.drift = DriftMonitor(config.drift, self.bundle)
            self.worker.observers.append(self.drift.observe)
        if config.fleet.enabled:  # edge/fleet: signed rollout commands on {prefix}/{site}/{device}/commands/fleet
            from .fleet.controller import FleetController

            self.fleet = FleetController(config, self.worker, publish=self._publish_fleet, event=self.worker.event,
                                         on_switch=self._publish_status)
            self.publisher.subscribe(self.fleet.topic, self.fleet.on_message)
            self.publisher.on_connected.append(self.fleet.on_connect)
        if rebuilt is not None:
            self.worker.event("error", "outbox_rebuilt", rebuilt.message())
        stored = self.outbox.count()
        if stored:
            log.info("%d messages from before the last stop wait in the outbox; they are delivered first", stored)
        self._install_signal_handlers()
        log.info("model %s %s (%s, %s runtime), site %s, device %s", self.model["name"], self.model["version"],
                 self.model["format"], self.classifier.runtime_name, config.site, config.device)
        if getattr(self.classifier, "ood", None) is None and config.ood.mode != "off":  # edge/ood.py
            log.warning("the bundle has no out-of-distribution reference (made before the OOD guard): the guard is "
                        "off, every decodable image is classified")
        self.publisher.start()
        self.worker.start()
        if self.fleet is not None:
            self.fleet.start()
        if self.pacs is not None:
            self.pacs.start()
        try:
            # Inside the try: a source that cannot start (port taken) still gets a clean shutdown.
            for source in self.sources:
                source.start(self.worker.submit)
            sd_notify.ready(f"sources: {', '.join(source.name for source in self.sources)}")
            self._main_loop()
        finally:
            self._shutdown()
        return 0

    def _install_signal_handlers(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # embedded (tests, benchmarks): the caller calls stop()

        def handle(signum, frame):
            log.info("%s received: finishing in-flight work", signal.Signals(signum).name)
            self.stop_event.set()

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def stop(self) -> None:
        self.stop_event.set()

    def _main_loop(self) -> None:
        heartbeat_s = self.config.mqtt.heartbeat_s
        watchdog_s = sd_notify.watchdog_interval()
        tick = min(heartbeat_s, watchdog_s or heartbeat_s, 1.0)
        next_heartbeat = time.monotonic() + min(heartbeat_s, 1.0)
        while not self.stop_event.wait(tick):
            self._check_health()
            if not self.assessment.degraded:
                # Silent while a stage is stuck: systemd then restarts a daemon that cannot heal itself.
                sd_notify.watchdog()
            if time.monotonic() >= next_heartbeat:
                next_heartbeat = time.monotonic() + heartbeat_s
                try:
                    self.publisher.publish_now(self.config.topic("heartbeat"), encode(self.heartbeat()))
                except Exception:  # a missed heartbeat must not stop the daemon
                    log.exception("could not publish a heartbeat")

    def _check_health(self) -> None:
        try:
            assessment = self.health.assess()
        except Exception:  # judging must never stop the loop that feeds the watchdog
            log.exception("could not assess the pipeline's health")
            return
        previous, self.assessment = self.assessment, assessment
        if assessment.degraded and assessment.stuck.keys() != previous.stuck.keys():
            self._announce("error", "stage_stuck", f"pipeline degraded: {assessment.reason}; "
                                                   f"{assessment.waiting} input(s) wait for an outcome")
            self._publish_status()
        elif previous.degraded and not assessment.degraded:
            self._announce("warning", "stage_recovered", f"pipeline working again after: {previous.reason}")
            self._publish_status()

    def _publish_status(self) -> None:
        sd_notify.status(f"degraded: {self.assessment.reason}" if self.assessment.degraded else "online")
        try:
            self.publisher.publish_now(self.config.topic("status"), encode(self._status("online", None)),
                                       qos=1, retain=True)
        except Exception:
            log.exception("could not publish the status")

    def _announce(self, level: str, kind: str, message: str) -> None:
        """An event stored in the outbox when it can be; published directly when not (the disk
        it would be stored on may be what is full)."""
        self.worker.event(level, kind, message)

    def _publish_fleet(self, topic: str, payload: bytes, qos: int, retain: bool) -> bool:
        return self.publisher.publish_now(topic, payload, qos=qos, retain=retain)

    def _publish_directly(self, topic: str, payload: bytes) -> None:
        try:
            self.publisher.publish_now(topic, payload, qos=1)
        except Exception:
            log.exception("could not publish an event directly")

    def heartbeat(self) -> dict:
        stats = self.worker.stats
        counters = {
            "processed": stats.processed,
            "rejected": stats.rejected,
            "not_applicable": stats.not_applicable,
            "queued": self.outbox.count("result"),
            "errors_queued": self.outbox.count("error"),
            "published": self.publisher.published,
            "dropped": self.outbox.dropped,
        }
        if self.pacs is not None:
            counters.update(self.pacs.counters())
        counters.update(waiting=self.assessment.waiting, stuck=self.assessment.stuck_inputs)
        return heartbeat_payload(site=self.config.site, device=self.config.device, health=self.assessment.to_dict(),
                                 uptime_s=time.monotonic() - self.started, counters=counters,
                                 latency_ms=stats.latency_ms(),
                                 sources={source.name: source.health() for source in self.sources},
                                 model=dict(self._active().info, runtime=self._active().classifier.runtime_name),
                                 rss_mb=rss_mb(), drift=self.drift.snapshot() if self.drift is not None else None,
                                 fleet=self.fleet.summary() if self.fleet is not None else None)

    def _shutdown(self) -> None:
        sd_notify.stopping()
        for source in reversed(self.sources):
            try:
                source.stop()
            except Exception:
                log.exception("source %s did not stop cleanly", source.name)
        if self.fleet is not None:
            self.fleet.stop()  # a download under way resumes at the next start
        self.worker.stop()
        if self.pacs is not None:
            self.pacs.stop()  # what the PACS has not confirmed stays queued for the next start
        if self.publisher.connected and not self.publisher.drain(DRAIN_S):
            log.info("%d messages stay in the outbox for the next start", self.outbox.count())
        self.publisher.stop()
        self.outbox.close()
        if self.guard is not None:
            self.guard.close()
        log.info("stopped")
