"""The Structured Report writer: a highdicom Comprehensive SR following TID 1500 (Measurement
Report), the pattern of IHE AI Results: one measurement group per result with

- the finding (the condition the model looks for) as finding type, with the source image referenced,
- the calibrated score and the operating threshold as numeric measurements,
- the decision (positive / negative / not applicable, with the reason) as a qualitative evaluation,
- the algorithm identification (model name, version, and its sha256 and format as parameters),
- "not for diagnostic use" as a comment in every group and in the series description.

The SR is in the source study (same StudyInstanceUID, patient module copied from the source by
highdicom), in a series of its own, and its evidence lists the source study, series and instance.
Codes: SNOMED CT for the decisions and the procedure, DCM for the comment, and a private scheme
99MEDGE (PS3.16 8.2: local codes) for what no standard code names exactly (score, threshold).
"""
from __future__ import annotations

from ..about import DISCLAIMER, __version__
from .reference import copy_patient_module, reference_dataset
from .result import Finding, ModelIdentity
from .uids import derived_uid, object_uids

MANUFACTURER = "medge"
SCHEME = "99MEDGE"


def _codes():
    from highdicom.sr import CodedConcept

    return {
        "score": CodedConcept("score", SCHEME, "Calibrated score"),
        "threshold": CodedConcept("threshold", SCHEME, "Operating threshold"),
        "decision": CodedConcept("decision", SCHEME, "Model decision"),
        "unit": CodedConcept("1", "UCUM", "no units"),
        "positive": CodedConcept("10828004", "SCT", "Positive"),
        "negative": CodedConcept("260385009", "SCT", "Negative"),
        "not_applicable": CodedConcept("385432009", "SCT", "Not applicable"),
        "comment": CodedConcept("121106", "DCM", "Comment"),
        "procedure": CodedConcept("363679005", "SCT", "Imaging procedure"),
        "algorithm_family": CodedConcept("123109", "DCM", "Manual Processing"),
    }


def finding_code(name: str):
    from highdicom.sr import CodedConcept

    return CodedConcept(name[:16], SCHEME, name)


def build_sr(source, findings: list[Finding], model: ModelIdentity, device: str = "medge"):
    """A Comprehensive SR (pydicom Dataset) for `findings` about the `source` instance."""
    import highdicom as hd
    from highdicom.sr import (
        AlgorithmIdentification,
        MeasurementReport,
        MeasurementsAndQualitativeEvaluations,
        ObservationContext,
        ObserverContext,
        QualitativeEvaluation,
        RelationshipTypeValues,
        SourceImageForMeasurementGroup,
        TextContentItem,
        TrackingIdentifier,
    )
    from pydicom.sr.codedict import codes

    if not findings:
        raise ValueError("build_sr needs at least one finding")
    code = _codes()
    source = reference_dataset(source)
    source_uid = str(source.SOPInstanceUID)
    series_uid, sop_uid = object_uids(source_uid, str(source.SeriesInstanceUID), model.sha256, "sr")
    algorithm = AlgorithmIdentification(name=model.name, version=model.version,
                                        parameters=[f"sha256={model.sha256}", f"format={model.format or 'unknown'}",
                                                    f"medge={__version__}"])
    device_context = ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=derived_uid("device", device), name=device[:64], manufacturer_name=MANUFACTURER,
            model_name=model.name[:64]))
    groups = []
    for index, finding in enumerate(findings):
        frames = None if finding.frame_index is None else [finding.frame_index + 1]
        try:
            image = SourceImageForMeasurementGroup.from_source_image(source, referenced_frame_numbers=frames)
        except TypeError:  # a single-frame IOD holding several frames: the comment names the frame
            image = SourceImageForMeasurementGroup.from_source_image(source)
        measurements = []
        if finding.decision != "not_applicable":
            measurements.append(hd.sr.Measurement(name=code["score"], value=finding.score, unit=code["unit"]))
            if finding.threshold is not None:
                measurements.append(hd.sr.Measurement(name=code["threshold"], value=finding.threshold,
                                                      unit=code["unit"]))
        group = MeasurementsAndQualitativeEvaluations(
            tracking_identifier=TrackingIdentifier(uid=derived_uid(sop_uid, "group", str(index)),
                                                   identifier=f"medge {finding.finding} {index + 1}"),
            finding_type=finding_code(finding.finding),
            algorithm_id=algorithm,
            source_images=[image],
            measurements=measurements or None,
            qualitative_evaluations=[QualitativeEvaluation(name=code["decision"], value=code[finding.decision])],
        )
        # TID 1501 has no comment row; a TEXT item in the group is what readers (dsrdump, viewers) show.
        frame = "" if finding.frame_index is None else f" [frame {finding.frame_index + 1}]"
        group[0].ContentSequence.append(TextContentItem(name=code["comment"],
                                                        value=f"{finding.summary()}{frame}. {DISCLAIMER}",
                                                        relationship_type=RelationshipTypeValues.CONTAINS))
        groups.append(group)
    report = MeasurementReport(observation_context=ObservationContext(observer_device_context=device_context),
                               procedure_reported=code["procedure"], imaging_measurements=groups)
    sr = hd.sr.ComprehensiveSR(
        evidence=[source], content=report[0], series_instance_uid=series_uid, series_number=_series_number(source, 900),
        sop_instance_uid=sop_uid, instance_number=int(source.get("InstanceNumber") or 1) or 1,
        manufacturer=MANUFACTURER, is_complete=True, is_final=False, is_verified=False,
        series_description=f"medge AI result - {model.name} {model.version} - NOT FOR DIAGNOSTIC USE"[:64],
        software_versions=f"medge {__version__}", manufacturer_model_name=model.name[:64],
    )
    copy_patient_module(source, sr)
    return sr


def _series_number(source, offset: int) -> int:
    """Next to the source series in a viewer's list, without colliding with the usual 1..n."""
    try:
        return offset + int(source.get("SeriesNumber") or 0) % 100
    except (TypeError, ValueError):
        return offset
