"""The source instance's identity as the writers need it: patient, study, series and SOP keys.

Scanners often leave out Type 2 attributes (PatientSex, StudyID, ...) that highdicom requires on
its reference dataset; they are filled here with empty values (what Type 2 allows) on a copy,
never on the received dataset. `copy_patient_module` then copies every patient attribute the
source has (group 0010, e.g. Other Patient IDs) onto an output object, so the PACS files it
under the same patient exactly as the source.
"""
from __future__ import annotations

PATIENT_GROUP = 0x0010
# Patient and General Study module attributes highdicom reads from the reference (Type 2: may be empty).
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
         "AccessionNumber", "ReferringPhysicianName")
KEYS = ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID", "Modality", "SeriesNumber",
        "InstanceNumber", "SpecificCharacterSet", "BodyPartExamined", "Laterality", "PatientOrientation",
        # The image pixel description: highdicom checks a referenced source is an image.
        "Rows", "Columns", "SamplesPerPixel", "PhotometricInterpretation", "BitsAllocated", "BitsStored",
        "HighBit", "PixelRepresentation", "NumberOfFrames")


def reference_dataset(source):
    """A small copy of `source` (no pixels) with what the writers need, Type 2 gaps filled."""
    from pydicom.dataset import Dataset

    missing = [key for key in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
               if not source.get(key)]
    if missing:
        raise ValueError(f"the source instance has no {', '.join(missing)}")
    reference = Dataset()
    for element in source:
        if element.tag.group == PATIENT_GROUP:
            reference.add(element)
    for key in TYPE2 + KEYS:
        if key in source:
            reference.add(source[key])
        elif key in TYPE2:
            setattr(reference, key, "")
    if not reference.get("Modality"):
        reference.Modality = "OT"  # Type 1 in the source; "other" keeps a broken sender answerable
    if str(reference.get("PatientSex", "")).upper() not in ("M", "F", "O"):
        reference.PatientSex = ""
    return reference


def copy_patient_module(source, target) -> None:
    """Every patient attribute of `source` that `target` lacks (highdicom copies the common ones)."""
    for element in source:
        if element.tag.group == PATIENT_GROUP and element.tag not in target:
            target.add(element)
