"""How objects reach a PACS: a registry of senders, one per protocol.

- `cstore`: DICOM C-STORE with pynetdicom to AE@HOST:PORT (`--pacs`).
- `stow`: DICOMweb STOW-RS with dicomweb-client to a base URL (`--stow`).

A sender's `send(deliveries)` returns {seq: None (stored) | reason (refused for good)} for the
objects the PACS answered, and raises `PacsUnavailable` when the PACS cannot be reached or is
out of resources, so the queue keeps the objects and retries with back-off. Messages name the
target and a status, never a UID or patient attribute.
"""
from __future__ import annotations

import io
import logging
import re
from dataclasses import dataclass

from ..errors import ConfigError

log = logging.getLogger(__name__)

SR_STORAGE = "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
SC_STORAGE = "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image
SYNTAXES = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2"]  # explicit, implicit VR little endian
VERIFICATION = "1.2.840.10008.1.1"
ADDRESS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>\[[^\]]+\]|[^:@]+):(?P<port>\d{1,5})$")


class PacsUnavailable(Exception):
    """The PACS cannot take objects now (down, refusing associations, out of resources)."""


@dataclass(frozen=True)
class AeAddress:
    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_ae_address(text: str, key: str = "pacs.cstore") -> AeAddress:
    """"ORTHANC@pacs.example.org:4242" -> AeAddress; ConfigError naming `key` otherwise."""
    match = ADDRESS.match(str(text).strip())
    port = int(match["port"]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise ConfigError(f"{key}: {text!r} must look like AE_TITLE@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
    from ..sources.dicom_receiver import validate_ae_title

    return AeAddress(validate_ae_title(match["ae"], key), match["host"].strip("[]"), port)


def _dataset(dicom: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(dicom))


class CStoreSender:
    kind = "cstore"

    def __init__(self, address: str, calling_ae: str = "MEDGE", timeout_s: float = 30.0):
        self.address = parse_ae_address(address)
        self.calling_ae = calling_ae
        self.timeout_s = timeout_s
        self.name = f"cstore:{self.address}"

    def _associate(self, contexts: list[str]):
        from pynetdicom import AE

        logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # it logs dataset summaries at INFO
        ae = AE(ae_title=self.calling_ae)
        for sop_class in contexts:
            ae.add_requested_context(sop_class, SYNTAXES)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout_s
        assoc = ae.associate(self.address.host, self.address.port, ae_title=self.address.ae_title)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "cannot be reached"
            raise PacsUnavailable(f"PACS {self.address} {why}")
        return assoc

    def echo(self) -> None:
        """C-ECHO; raises PacsUnavailable with the reason."""
        assoc = self._associate([VERIFICATION])
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            raise PacsUnavailable(f"PACS {self.address} did not answer the C-ECHO with Success")

    def send(self, deliveries) -> dict[int, str | None]:
        assoc = self._associate([SR_STORAGE, SC_STORAGE])
        answers: dict[int, str | None] = {}
        accepted = {str(context.abstract_syntax) for context in assoc.accepted_contexts}
        try:
            for delivery in deliveries:
                dataset = _dataset(delivery.dicom)
                if str(dataset.SOPClassUID) not in accepted:  # refused at negotiation: for good
                    answers[delivery.seq] = f"PACS {self.address} does not accept {delivery.kind.upper()} objects " \
                                            "(SOP class not accepted in the association)"
                    continue
                status = assoc.send_c_store(dataset)
                code = getattr(status, "Status", None) if status else None
                if code is None:  # no answer: the association dropped or timed out
                    raise PacsUnavailable(f"PACS {self.address} gave no C-STORE response")
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # Success, or Warning (stored, coerced)
                    answers[delivery.seq] = None
                elif 0xA700 <= code <= 0xA7FF:  # Out of resources: transient
                    raise PacsUnavailable(f"PACS {self.address} is out of resources (0x{code:04X})")
                elif code == 0x0122:
                    answers[delivery.seq] = f"PACS {self.address} does not accept this SOP class (0x0122)"
                else:
                    answers[delivery.seq] = f"PACS {self.address} refused the object (status 0x{code:04X})"
        finally:
            if assoc.is_established:
                assoc.release()
        return answers


class _TimeoutSession:
    """requests has no session-wide timeout: a hung PACS must not hold the delivery thread."""

    def __new__(cls, timeout_s: float):
        import requests

        class Session(requests.Session):
            def request(self, *args, **kwargs):
                kwargs.setdefault("timeout", timeout_s)
                return super().request(*args, **kwargs)

        return Session()


class StowSender:
    kind = "stow"

    def __init__(self, url: str, timeout_s: float = 30.0):
        url = str(url).strip().rstrip("/")
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"pacs.stow: {url!r} must be the DICOMweb base URL, e.g. http://pacs:8042/dicom-web")
        self.url = url
        self.timeout_s = timeout_s
        self.name = f"stow:{_without_credentials(url)}"

    def _client(self):
        from dicomweb_client import DICOMwebClient

        logging.getLogger("dicomweb_client").setLevel(logging.WARNING)  # it logs study UIDs at INFO
        client = DICOMwebClient(url=self.url, session=_TimeoutSession(self.timeout_s))
        client.set_http_retry_params(retry=False)  # the queue retries, with its own back-off
        return client

    def send(self, deliveries) -> dict[int, str | None]:
        import requests

        deliveries = list(deliveries)
        try:
            response = self._client().store_instances([_dataset(d.dicom) for d in deliveries])
        except requests.HTTPError as error:
            code = error.response.status_code if error.response is not None else 0
            if code >= 500 or code in (408, 429) or code == 0:
                raise PacsUnavailable(f"STOW-RS {self.name[5:]} answered HTTP {code}") from None
            failed = _failed_uids(error.response)
            if code == 409 and failed is not None:  # some stored, some refused
                return {d.seq: (f"STOW-RS {self.name[5:]} refused the object (HTTP 409)" if d.sop_uid in failed
                                else None) for d in deliveries}
            return {d.seq: f"STOW-RS {self.name[5:]} refused the objects (HTTP {code})" for d in deliveries}
        except (requests.ConnectionError, requests.Timeout) as error:
            raise PacsUnavailable(f"STOW-RS {self.name[5:]} cannot be reached ({type(error).__name__})") from None
        failed = {str(item.ReferencedSOPInstanceUID) for item in (response.get("FailedSOPSequence") or [])}
        return {d.seq: (f"STOW-RS {self.name[5:]} refused the object" if d.sop_uid in failed else None)
                for d in deliveries}


def _failed_uids(response) -> set[str] | None:
    try:
        from pydicom import Dataset

        dataset = Dataset.from_json(response.json())
        return {str(item.ReferencedSOPInstanceUID) for item in dataset.get("FailedSOPSequence", [])}
    except Exception:
        return None


def _without_credentials(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)


SENDERS = {"cstore": CStoreSender, "stow": StowSender}
