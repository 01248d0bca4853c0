"""What `medge edge check` probes, as structured results the CLI only renders.

Each check returns a `CheckResult` (or raises MedgeError, which counts as a failed check);
the sources' own probes live in their modules (`SourceType.check`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CheckResult:
    ok: bool
    detail: str  # one line

    @classmethod
    def passed(cls, detail: str) -> CheckResult:
        return cls(True, detail)

    @classmethod
    def failed(cls, detail: str) -> CheckResult:
        return cls(False, detail)

    @classmethod
    def of(cls, problems: list[str], detail: str) -> CheckResult:
        """Failed with the problems joined, or passed with `detail`."""
        return cls.failed("; ".join(problems)) if problems else cls.passed(detail)


def writable(path: Path) -> str | None:
    """None if `path` (created if missing) takes a file, else why not."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".medge-check"
        probe.write_text("ok")
        probe.unlink()
        return None
    except OSError as error:
        return f"{path} is not writable ({error.strerror or error})"


def check_config(config) -> CheckResult:
    notes = "".join(f"; {warning}" for warning in config.warnings)
    return CheckResult.passed(f"site {config.site}, device {config.device}, broker {config.mqtt.broker}, sources: "
                              + (", ".join(config.source_names()) or "none") + notes)


def check_bundle(config) -> CheckResult:
    if config.bundle is None:
        return CheckResult.failed("no bundle given")
    from .bundle import load_bundle
    from .classify import Classifier

    bundle = load_bundle(config.bundle, trusted_keys=config.signature.trusted_keys)
    classifier = Classifier.for_config(bundle, config)
    signature = f"signed by trusted key {bundle.signed_by}" if bundle.signed_by else "signature not checked (no signature.trusted_keys)"
    return CheckResult.passed(f"{bundle.name} {bundle.version}: every sha256 matches, {signature}; "
                              f"{classifier.artifact.format} on {classifier.runtime_name}")


def check_sources(config) -> CheckResult:
    from .sources.registry import source_types

    types = source_types()
    enabled = [source for source in types.values() if source.enabled(config.source_settings[source.name])]
    if not enabled:
        switches = ", ".join(source.switch_key for source in types.values())
        return CheckResult.failed(f"no input source (set {switches})")
    problems = []
    for source in enabled:
        missing = source.missing_requirement()
        result = CheckResult.failed(missing) if missing else source.check(config.source_settings[source.name], config)
        if not result.ok:
            problems.append(result.detail)
    return CheckResult.of(problems, ", ".join(source.name for source in enabled))


def check_state(config) -> CheckResult:
    problem = writable(config.state_dir)
    return CheckResult.failed(problem) if problem else CheckResult.passed(
        f"{config.state_dir} (outbox max {config.state.outbox_max})")


def check_broker(config) -> CheckResult:
    from .comms import probe_broker

    problem = probe_broker(config)
    return CheckResult.failed(problem) if problem else CheckResult.passed(
        f"{config.mqtt.broker} accepted the connection (MQTT {config.mqtt.mqtt_version})")


def check_pacs(config) -> CheckResult:
    from .pacs.checks import check_pacs as probe_pacs

    return probe_pacs(config)  # C-ECHO / DICOMweb probe of the PACS results go to (edge/pacs)


CHECKS = [("config", check_config), ("bundle", check_bundle), ("sources", check_sources),
          ("state", check_state), ("broker", check_broker), ("pacs", check_pacs)]


def run_checks(config):
    """(name, CheckResult) per check; an unexpected exception is a failed check, never a crash."""
    from .errors import MedgeError

    for name, check in CHECKS:
        try:
            result = check(config)
        except MedgeError as error:
            result = CheckResult.failed(str(error))
        except Exception as error:
            result = CheckResult.failed(f"{type(error).__name__}: {error}")
        yield name, result
