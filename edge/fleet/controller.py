"""The device's rollout state machine, one thread, one step at a time:

    command -> operator signature (fleet.trusted_operator_keys) -> download (resumable, sha256)
    -> unpack into the store -> bundle signature (signature.trusted_keys) and hashes
    -> self-test on this runtime -> shadow run (optional) -> promote | refuse | roll back

Every step is reported as a retained `fleet` message; every refusal is also an error event.
A switch persists the store's pointer first and then swaps the worker's model between two
inputs (`Worker.switch_model`): no restart, no input lost or classified twice, and a power cut
on either side of it leaves a model the daemon can start with. Commands arrive retained, so
each id is remembered: a replay or an old command is ignored, and a command that was under way
when the daemon died is taken up again at the next start (at most MAX_ATTEMPTS times).
"""
from __future__ import annotations

import hashlib
import json
import logging
import queue
import threading
from pathlib import Path

from ..errors import MedgeError
from .commands import CommandError, command_topic, decode_command, fleet_payload, model_ref, verify_command
from .download import download
from .selftest import run_self_test
from .shadow import ShadowRun
from .store import BundleStore, Entry, write_json_atomically

log = logging.getLogger("medge.edge.fleet")

MAX_ATTEMPTS = 3
TERMINAL = ("promoted", "refused", "rolled_back")
REPORT_NAME = "report.json"


def fleet_dir(config) -> Path:
    return config.fleet.dir or config.state_dir / "fleet"


def entry_for(bundle, artifact, store: BundleStore | None = None) -> Entry:
    path = Path(bundle.path).resolve()
    archive = path.name if store is not None and path.parent == store.bundles.resolve() else None
    return Entry(path=str(path), name=str(bundle.name), version=str(bundle.version), sha256=artifact.sha256,
                 archive_sha256=archive)


def load_model(path, config):
    """A verified bundle folder -> an ActiveModel (ready to classify), or MedgeError."""
    from ..bundle import load_bundle
    from ..classify import Classifier
    from ..daemon import model_info
    from ..worker import ActiveModel

    bundle = load_bundle(path, trusted_keys=config.signature.trusted_keys,
                         require_signature=config.signature.required)
    classifier = Classifier.for_config(bundle, config)
    return ActiveModel(classifier=classifier, bundle=bundle, info=model_info(bundle, classifier.artifact))


def startup_bundle(config):
    """The bundle the daemon starts with: the store's active one, else its previous one, else the
    configured bundle; the first that verifies. Raises the last error if none does."""
    from ..bundle import load_bundle

    candidates = []
    try:
        pointer = BundleStore(fleet_dir(config)).read_pointer()
    except MedgeError as error:
        log.error("fleet: %s; starting with the configured bundle", error)
        pointer = None
    if pointer is not None:
        candidates.append(("active", pointer.active.path))
        if pointer.previous is not None:
            candidates.append(("previous", pointer.previous.path))
    if config.bundle is not None:
        candidates.append(("configured", config.bundle))
    if not candidates:
        from ..errors import ConfigError

        raise ConfigError("bundle: no model bundle given and the fleet store holds none")
    error = None
    for role, path in candidates:
        try:
            bundle = load_bundle(path, trusted_keys=config.signature.trusted_keys,
                                 require_signature=config.signature.required)
        except MedgeError as failure:
            error = failure
            log.error("fleet: cannot start with the %s bundle (%s); trying the next one", role, failure)
            continue
        if role != "active" and pointer is not None:
            log.warning("fleet: started with the %s bundle %s %s", role, bundle.name, bundle.version)
        return bundle
    raise error


class FleetController:
    def __init__(self, config, worker, publish, event, on_switch=None):
        """`publish(topic, payload_bytes, qos, retain)` sends now (False when offline);
        `event(level, kind, message)` stores an error/warning event in the outbox;
        `on_switch()` after each model switch (the daemon re-publishes its retained status)."""
        self.on_switch = on_switch
        from ..payloads import encode

        self.config = config
        self.worker = worker
        self._publish = publish
        self._encode = encode
        self.event = event
        self.store = BundleStore(fleet_dir(config))
        self.keys = list(config.fleet.trusted_operator_keys)
        self.topic = command_topic(config.mqtt.topic_prefix, config.site, config.device)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.shadow: ShadowRun | None = None
        self.candidate = None  # (Command, Entry, ActiveModel) while in shadow
        pointer = self._pointer()
        active = worker.active
        self.current = entry_for(active.bundle, active.classifier.artifact, self.store)
        # Started on a fallback (the pointer's bundle would not load): nothing trustworthy to roll back to.
        self.previous = pointer.previous if pointer is not None and pointer.active.path == self.current.path else None
        self.last_report = self._saved_report()

    # ------------------------------------------------------------------ wiring
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="medge-fleet", daemon=True)
        self._thread.start()
        report = self.last_report or {}
        state = report.get("state", "idle")
        self.report(state if state in TERMINAL or state == "idle" else "idle", rollout=report.get("rollout"),
                    command_id=report.get("command_id"), reason=report.get("reason") if state in TERMINAL else None)

    def stop(self) -> None:
        self._stopping.set()
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(10)

    def on_message(self, payload: bytes) -> None:
        """A message on the command topic (paho's network thread): handled on our thread."""
        self._queue.put(("command", payload))

    def on_connect(self) -> None:
        """Republish the latest report (retained), which may not have reached the broker."""
        if self.last_report is not None:
            self._send_report(self.last_report)

    def summary(self) -> dict:
        """The heartbeat's `fleet` part."""
        report = self.last_report or {}
        return {"state": report.get("state", "idle"), "rollout": report.get("rollout"),
                "active": model_ref(self.current.ref()),
                "candidate": model_ref(self.candidate[1].ref()) if self.candidate else None}

    # ------------------------------------------------------------------ reports
    def _pointer(self):
        try:
            return self.store.read_pointer()
        except MedgeError as error:
            log.error("fleet: %s", error)
            return None

    def _saved_report(self) -> dict | None:
        try:
            return json.loads((self.store.root / REPORT_NAME).read_text())
        except (OSError, ValueError):
            return None

    def report(self, state: str, *, rollout=None, command_id=None, candidate: Entry | None = None,
               shadow: dict | None = None, reason: str | None = None) -> dict:
        payload = fleet_payload(site=self.config.site, device=self.config.device, state=state,
                                active=self.current.ref(), rollout=rollout, command_id=command_id,
                                candidate=candidate.ref() if candidate else None,
                                previous=self.previous.ref() if self.previous else None, shadow=shadow,
                                reason=reason)
        for key, entry in (("active", self.current), ("candidate", candidate), ("previous", self.previous)):
            if entry is not None and payload[key] is not None and entry.archive_sha256:
                payload[key]["archive_sha256"] = entry.archive_sha256  # the sha256 a deploy command names
        self.last_report = payload
        try:
            write_json_atomically(self.store.root / REPORT_NAME, payload)
        except OSError as error:
            log.warning("fleet: cannot keep the last report (%s)", error)
        self._send_report(payload)
        log.info("fleet: %s%s%s", state, f" ({rollout})" if rollout else "", f": {reason}" if reason else "")
        return payload

    def _send_report(self, payload: dict) -> None:
        try:
            self._publish(self.config.topic("fleet"), self._encode(payload), 1, True)
        except Exception:
            log.exception("fleet: could not publish the report")

    def _publish_shadow(self, payload: dict) -> None:
        self._publish(self.config.topic("shadow"), self._encode(payload), 0, False)

    # ------------------------------------------------------------------ the loop
    def _run(self) -> None:
        while not self._stopping.is_set():
            message = self._queue.get()
            if message is None:
                return
            kind, data = message
            try:
                if kind == "command":
                    self._command(data)
                elif kind == "shadow_done":
                    self._shadow_done(data)
                elif kind == "shadow_progress" and data is self.shadow and not data.done:
                    command, entry, _ = self.candidate
                    self.report("shadow", rollout=command.rollout, command_id=command.id, candidate=entry,
                                shadow=data.progress())
            except Exception as error:  # a bug must not end rollouts for the daemon's lifetime
                log.exception("fleet: unexpected failure")
                self.event("error", "fleet_failure", f"fleet: unexpected failure ({type(error).__name__}: {error})")

    def _command(self, raw: bytes) -> None:
        if not raw:
            return  # an empty retained message clears the command topic
        try:
            payload = decode_command(raw)
        except CommandError as error:
            return self._refuse_unverified(hashlib.sha256(raw).hexdigest()[:32], {}, error)
        command_id = payload.get("id") if isinstance(payload.get("id"), str) else hashlib.sha256(raw).hexdigest()[:32]
        record = self.store.commands().get(command_id)
        if record is not None and record.get("state") in TERMINAL:
            log.debug("fleet: command %s already handled (%s); ignored", command_id, record.get("state"))
            return
        try:
            command = verify_command(payload, self.keys, self.config.site, self.config.device)
        except MedgeError as error:
            return self._refuse_unverified(command_id, payload, error)
        attempts = int(record.get("attempts", 0)) + 1 if record else 1
        if attempts > MAX_ATTEMPTS:
            self._finish(command, "refused", reason=f"gave up after {MAX_ATTEMPTS} attempts: the daemon stopped "
                                                    "during each", candidate=None)
            return
        self.store.remember(command.id, {"state": "started", "attempts": attempts, "action": command.action,
                                         "rollout": command.rollout})
        log.info("fleet: %s command %s (rollout %s) from key %s", command.action, command.id, command.rollout,
                 command.key_id)
        if command.action == "deploy":
            self._deploy(command)
        elif command.action == "promote":
            self._promote_command(command)
        else:
            self._rollback_command(command)

    def _refuse_unverified(self, command_id: str, payload: dict, error: Exception) -> None:
        rollout = payload.get("rollout") if isinstance(payload.get("rollout"), str) else None
        message = str(error)
        self.store.remember(command_id, {"state": "refused", "reason": message[:300]})
        self.event("error", "fleet_command_refused", message)
        self.report("refused", rollout=rollout[:128] if rollout else None, command_id=command_id[:64], reason=message)

    def _finish(self, command, state: str, *, reason: str | None = None, candidate: Entry | None = None,
                shadow: dict | None = None) -> None:
        self.store.remember(command.id, {"state": state, "action": command.action, "rollout": command.rollout,
                                         **({"reason": reason[:300]} if reason else {})})
        if state == "refused":
            self.event("error", "fleet_bundle_refused", f"rollout {command.rollout}: {reason}")
        elif state == "rolled_back":
            self.event("warning", "fleet_rolled_back", f"rollout {command.rollout}: {reason}")
        self.report(state, rollout=command.rollout, command_id=command.id, candidate=candidate, shadow=shadow,
                    reason=reason)

    # ------------------------------------------------------------------ deploy
    def _deploy(self, command) -> None:
        self._cancel_shadow("superseded by rollout " + command.rollout)
        ref = command.bundle
        if ref.sha256 == self.current.archive_sha256:
            self._finish(command, "promoted", reason="already the active bundle")
            return
        target = Entry(path=str(self.store.bundle_path(ref.sha256)), name=ref.name, version=ref.version, sha256="",
                       archive_sha256=ref.sha256)
        max_bytes = int(self.config.fleet.max_bundle_mb * 1024 * 1024)
        if ref.size > max_bytes:
            self._finish(command, "refused", candidate=target,
                         reason=f"bundle archive is {ref.size} bytes, more than fleet.max_bundle_mb allows")
            return
        try:
            self.report("downloading", rollout=command.rollout, command_id=command.id, candidate=target)
            archive = download(ref.url, self.store.archive_path(ref.sha256), sha256=ref.sha256, size=ref.size,
                               stop=self._stopping.is_set)
            if self._stopping.is_set():
                return
            self.report("verifying", rollout=command.rollout, command_id=command.id, candidate=target)
            folder = self.store.install(archive, ref.sha256)
            model = load_model(folder, self.config)
            bundle = model.bundle
            if (str(bundle.name), str(bundle.version)) != (ref.name, ref.version):
                raise MedgeError(f"the archive holds {bundle.name} {bundle.version}, the command names "
                                 f"{ref.name} {ref.version}")
            candidate = entry_for(bundle, model.classifier.artifact, self.store)
            self.report("self_test", rollout=command.rollout, command_id=command.id, candidate=candidate)
            result = run_self_test(model.classifier)
        except MedgeError as error:
            if self._stopping.is_set():
                return  # taken up again at the next start
            self.store.discard(ref.sha256)
            self._finish(command, "refused", reason=str(error), candidate=target)
            return
        if result is None:
            if self.config.fleet.require_self_test:
                self.store.discard(ref.sha256)
                self._finish(command, "refused", candidate=candidate,
                             reason="the bundle carries no self-test reference set (fleet.require_self_test)")
                return
            note = "no self-test in the bundle (made before medge wrote one): skipped"
            log.warning("fleet: %s", note)
        elif not result.passed:
            self.store.discard(ref.sha256)
            self._finish(command, "refused", reason=result.reason, candidate=candidate)
            return
        else:
            note = result.reason
            log.info("fleet: %s", note)
        if command.shadow > 0:
            self._start_shadow(command, candidate, model)
        else:
            self._switch(command, candidate, model, reason=note)

    def _switch(self, command, entry: Entry, model, reason: str | None = None) -> None:
        """Persist the pointer, then swap the worker's model between inputs."""
        self.store.activate(entry, self.current, command.rollout, command.id)
        if entry.path != self.current.path:
            self.previous = self.current
        self.worker.switch_model(model)
        self.current = entry
        self._switched()
        self._finish(command, "promoted", reason=reason)
        self.store.prune()

    def _switched(self) -> None:
        if self.on_switch is not None:
            try:
                self.on_switch()
            except Exception:
                log.exception("fleet: after the switch")

    # ------------------------------------------------------------------ shadow
    def _start_shadow(self, command, entry: Entry, model) -> None:
        run = ShadowRun(candidate=model, target=command.shadow, rollout=command.rollout, site=self.config.site,
                        device=self.config.device, publish=self._publish_shadow,
                        on_done=lambda run: self._queue.put(("shadow_done", run)))
        self.shadow, self.candidate = run, (command, entry, model)
        self.report("shadow", rollout=command.rollout, command_id=command.id, candidate=entry, shadow=run.progress())
        self._last_progress = 0
        self.worker.observers.append(self._observe)

    def _observe(self, item, analysis, active, messages) -> None:
        run = self.shadow
        if run is None:
            return
        run(item, analysis, active, messages)
        # a progress report now and then (each one a retained message), sent from our own thread
        if not run.done and run.seen - self._last_progress >= max(1, run.target // 10):
            self._last_progress = run.seen
            self._queue.put(("shadow_progress", run))

    def _end_shadow(self):
        if self._observe in self.worker.observers:
            self.worker.observers.remove(self._observe)
        run, candidate = self.shadow, self.candidate
        self.shadow, self.candidate = None, None
        return run, candidate

    def _cancel_shadow(self, why: str) -> None:
        if self.shadow is None:
            return
        run, (command, entry, _) = self._end_shadow()
        self.store.discard(entry.archive_sha256)
        self._finish(command, "rolled_back", reason=why, candidate=entry, shadow=run.progress())

    def _shadow_done(self, run: ShadowRun) -> None:
        if run is not self.shadow:
            return
        _, (command, entry, model) = self._end_shadow()
        agreement = run.agreement or 0.0
        verdict = f"shadow agreement {agreement:.3f} on {run.seen} inputs (needed {command.min_agreement:g})"
        if agreement >= command.min_agreement:
            self._switch(command, entry, model, reason=verdict)
            return
        self.store.discard(entry.archive_sha256)
        self._finish(command, "rolled_back", reason=verdict, candidate=entry, shadow=run.progress())

    # ------------------------------------------------------------------ promote / rollback commands
    def _promote_command(self, command) -> None:
        if self.shadow is None:
            self._finish(command, "refused", reason="nothing to promote: no shadow run in progress")
            return
        run, (shadowed, entry, model) = self._end_shadow()
        self.store.remember(shadowed.id, {"state": "promoted", "rollout": shadowed.rollout})
        self._switch(command, entry, model, reason=f"promoted on command after {run.seen} shadow inputs "
                                                   f"(agreement {run.agreement if run.agreement is not None else 'n/a'})")

    def _rollback_command(self, command) -> None:
        if self.shadow is not None:
            run, (shadowed, entry, _) = self._end_shadow()
            self.store.remember(shadowed.id, {"state": "rolled_back", "rollout": shadowed.rollout})
            self.store.discard(entry.archive_sha256)
            self._finish(command, "rolled_back", reason="rolled back on command during the shadow run",
                         candidate=entry, shadow=run.progress())
            return
        if self.previous is None:
            self._finish(command, "refused", reason="no previous bundle to roll back to")
            return
        try:
            model = load_model(self.previous.path, self.config)
        except MedgeError as error:
            self._finish(command, "refused", reason=f"the previous bundle cannot be loaded ({error})")
            return
        back, leaving = self.previous, self.current
        self.store.activate(back, leaving, command.rollout, command.id)
        self.worker.switch_model(model)
        self.current, self.previous = back, leaving
        self._switched()
        self._finish(command, "rolled_back", reason=f"rolled back on command from {leaving.name} {leaving.version}")
