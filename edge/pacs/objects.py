"""Both writers for one classified DICOM input: result payloads in, (UID, kind, Part 10 bytes) out."""
from __future__ import annotations

import io
import logging

import numpy as np

from .result import Finding, ModelIdentity

OUTPUT_KINDS = ("sr", "sc")
# highdicom logs the source's UIDs at INFO ("copy Study-related attributes from dataset ..."):
# the device's journal is shipped off the device, so it hears warnings only.
logging.getLogger("highdicom").setLevel(logging.WARNING)


def write_objects(source, frames: list[np.ndarray], payloads: list[dict], finding: str, device: str,
                  kinds=OUTPUT_KINDS, heatmap: np.ndarray | None = None) -> list[tuple[str, str, bytes]]:
    """The SR and/or SC for `source` (the received dataset) and its result payloads.

    `frames` are the display pixels the model saw (DecodedImage.frames); the SC shows the frame
    of the first result (no frames, e.g. an input judged out of scope from its header alone:
    the SR only). `heatmap` (edge/explain.py's map of that frame) is blended in by the SC writer."""
    from .secondary_capture import build_sc
    from .sr import build_sr

    if not payloads:
        return []
    findings = [Finding.from_payload(payload, finding) for payload in payloads]
    model = ModelIdentity.from_payload(payloads[0]["model"])
    objects = []
    if "sr" in kinds:
        objects.append(("sr", build_sr(source, findings, model, device)))
    if "sc" in kinds and frames:
        index = findings[0].frame_index or 0
        objects.append(("sc", build_sc(source, frames[min(index, len(frames) - 1)], findings, model, heatmap)))
    return [(str(dataset.SOPInstanceUID), kind, part10(dataset)) for kind, dataset in objects]


def header_bytes(reference) -> bytes:
    """A reference dataset (edge/pacs/reference.py: no pixels) as Part 10 bytes, for the queue."""
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian

    reference.file_meta = FileMetaDataset()
    reference.file_meta.MediaStorageSOPClassUID = reference.SOPClassUID
    reference.file_meta.MediaStorageSOPInstanceUID = reference.SOPInstanceUID
    reference.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return part10(reference)


def read_dicom(data: bytes):
    import pydicom

    return pydicom.dcmread(io.BytesIO(data))


def part10(dataset) -> bytes:
    buffer = io.BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
