"""The Secondary Capture writer: the source image as the model saw it (display pixels after the
VOI window), with the result and "NOT FOR DIAGNOSTIC USE" burned in by OpenCV, as an RGB SC image
in the source study (same StudyInstanceUID, patient module copied by highdicom), in a new series.

`heatmap` is the extension point for explanations (issue 13): a float array in [0, 1] of any
size (edge/explain.py's occlusion map from the int8 model), blended over the image with a colour
map when given. Without it the image is the source with the text banner only.
"""
from __future__ import annotations

import numpy as np

from ..about import DISCLAIMER, __version__

# The blending and burn-in are shared with the watch-folder and `medge predict --explain` overlays.
from ..explain import GREEN, RED, WHITE, YELLOW, banner, fit_for_capture, overlay_heatmap, to_rgb
from .reference import copy_patient_module, reference_dataset
from .result import Finding, ModelIdentity
from .sr import MANUFACTURER, _series_number
from .uids import object_uids


def render(pixels: np.ndarray, findings: list[Finding], model: ModelIdentity,
           heatmap: np.ndarray | None = None) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 display pixels -> (h, w, 3) uint8 RGB with the banner burned in."""
    rgb = to_rgb(fit_for_capture(np.asarray(pixels)))
    if heatmap is not None:
        rgb = overlay_heatmap(rgb, heatmap)
    lines = [(f"medge {model.name} {model.version} - NOT FOR DIAGNOSTIC USE", YELLOW)]
    for finding in findings:
        colour = {"positive": RED, "negative": GREEN}.get(finding.decision, WHITE)
        frame = "" if finding.frame_index is None else f" [frame {finding.frame_index + 1}]"
        lines.append((finding.summary() + frame, colour))
    lines.append((DISCLAIMER, YELLOW))
    return banner(rgb, lines)


def build_sc(source, pixels: np.ndarray, findings: list[Finding], model: ModelIdentity,
             heatmap: np.ndarray | None = None):
    """A Secondary Capture Image (pydicom Dataset) of `pixels` (the source's display pixels)."""
    import highdicom as hd
    from pydicom.uid import ExplicitVRLittleEndian

    source = reference_dataset(source)
    series_uid, sop_uid = object_uids(str(source.SOPInstanceUID), str(source.SeriesInstanceUID), model.sha256, "sc")
    image = render(pixels, findings, model, heatmap)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source, pixel_array=image, photometric_interpretation="RGB", bits_allocated=8,
        coordinate_system="PATIENT", series_instance_uid=series_uid, series_number=_series_number(source, 901),
        sop_instance_uid=sop_uid, instance_number=int(source.get("InstanceNumber") or 1) or 1,
        manufacturer=MANUFACTURER, transfer_syntax_uid=ExplicitVRLittleEndian,
        # highdicom insists on an orientation; the real one (often none) is set right below.
        patient_orientation=("L", "F"),
        series_description=f"medge AI result image - {model.name} - NOT FOR DIAGNOSTIC USE"[:64],
        software_versions=f"medge {__version__}", manufacturer_model_name=model.name[:64],
    )
    # Type 2: the source's orientation when it has one, else empty, never a guess.
    sc.PatientOrientation = source.get("PatientOrientation", "")
    copy_patient_module(source, sc)
    sc.BurnedInAnnotation = "YES"
    sc.ImageComments = f"{findings[0].summary()}. {DISCLAIMER}"[:10240]
    if heatmap is not None:
        sc.ImageType = ["DERIVED", "SECONDARY", "HEATMAP"]
    return sc
