"""`medge edge check`'s PACS line: a C-ECHO to the C-STORE target, a QIDO-RS probe of the STOW
base URL (a GET that stores nothing)."""
from __future__ import annotations

from ..checks import CheckResult
from .senders import CStoreSender, PacsUnavailable, StowSender


def check_pacs(config) -> CheckResult:
    settings = config.pacs
    if not settings.cstore and not settings.stow:
        return CheckResult.passed("not configured (results stay on MQTT; set pacs.cstore or pacs.stow to send SR/SC)")
    from .delivery import preload

    preload(stow=bool(settings.stow))  # a missing package is a ConfigError: a failed check line
    details, problems = [], []
    if settings.cstore:
        sender = CStoreSender(settings.cstore, calling_ae=settings.calling_ae or config.dicom.ae_title,
                              timeout_s=min(settings.timeout_s, 10.0))
        try:
            sender.echo()
            details.append(f"C-ECHO to {sender.address} answered Success")
        except PacsUnavailable as error:
            problems.append(f"C-ECHO: {error}")
    if settings.stow:
        problems_or_detail = _probe_stow(StowSender(settings.stow, timeout_s=min(settings.timeout_s, 10.0)))
        (problems if problems_or_detail.startswith("STOW-RS") else details).append(problems_or_detail)
    return CheckResult.of(problems + details if problems else [], "; ".join(details))


def _probe_stow(sender: StowSender) -> str:
    import requests

    url = sender.url + "/studies"
    try:
        response = requests.get(url, params={"limit": "1"}, headers={"Accept": "application/dicom+json"},
                                timeout=sender.timeout_s)
    except requests.RequestException as error:
        return f"STOW-RS {sender.name[5:]} cannot be reached ({type(error).__name__})"
    if response.status_code >= 400:
        return f"STOW-RS {sender.name[5:]}: QIDO-RS probe answered HTTP {response.status_code}"
    return f"DICOMweb at {sender.name[5:]} answered HTTP {response.status_code}"
