"""The DICOM writers of edge/pacs on a real chest X-ray written as a CR with patient tags: the
Structured Report as dcmtk's dsrdump reads it, the Secondary Capture's burned-in text, the
patient and study they share with the source, and UIDs that are the same on every retry."""
from __future__ import annotations

import subprocess

import numpy as np
import pydicom
import pytest

from medge.edge.pacs.objects import write_objects
from medge.edge.pacs.result import Finding, ModelIdentity
from medge.edge.pacs.secondary_capture import RED, YELLOW, build_sc
from medge.edge.pacs.sr import build_sr
from medge.edge.preprocess import decode_dicom_dataset
from tests.fixtures.dicom import CR_IMAGE, dcmtk_tool, write_xray_dicom
from tests.fixtures.edge import PHI, small_xray

MODEL = ModelIdentity(name="pneumonia-cnn", version="1.2.0", sha256="5e" * 32, format="tflite-int8")
POSITIVE = Finding(status="classified", finding="pneumonia", label="pneumonia", score=0.8731, threshold=0.41,
                   positive=True)


@pytest.fixture
def source_cr(tmp_path):
    path = write_xray_dicom(tmp_path / "cr.dcm", small_xray(1, 384), modality="CR", sop_class=CR_IMAGE, tags=PHI)
    return pydicom.dcmread(path)


def dsrdump(dataset, tmp_path) -> str:
    path = tmp_path / "sr.dcm"
    dataset.save_as(path, enforce_file_format=True)
    done = subprocess.run([dcmtk_tool("dsrdump"), "+Pl", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_sr_reports_finding_score_threshold_decision_and_model_in_the_source_study(source_cr, tmp_path):
    sr = build_sr(source_cr, [POSITIVE], MODEL, device="xray-room-2")
    text = dsrdump(sr, tmp_path)

    assert text.startswith("Comprehensive SR Document")
    assert '"Imaging Measurement Report"' in text  # TID 1500
    assert 'CODE:(,,"Finding")=(pneumonia,99MEDGE,"pneumonia")' in text
    assert 'NUM:(,,"Calibrated score")="0.8731"' in text
    assert 'NUM:(,,"Operating threshold")="0.41"' in text
    assert 'CODE:(,,"Model decision")=(10828004,SCT,"Positive")' in text
    assert '"Algorithm Name")="pneumonia-cnn"' in text and '"Algorithm Version")="1.2.0"' in text
    assert f"sha256={MODEL.sha256}" in text
    assert "not for diagnostic use" in text.lower()
    assert 'IMAGE:(,,"Source of Measurement")=(CR image,)' in text
    assert '"Device Observer Name")="xray-room-2"' in text

    # Same patient and study as the source, a series of its own.
    assert sr.StudyInstanceUID == source_cr.StudyInstanceUID
    assert sr.SeriesInstanceUID != source_cr.SeriesInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "OtherPatientIDs", "AccessionNumber"):
        assert str(sr.get(keyword)) == str(source_cr.get(keyword)), keyword
    assert "NOT FOR DIAGNOSTIC USE" in sr.SeriesDescription
    # The evidence names the source study, series and instance.
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source_cr.StudyInstanceUID
    series = evidence.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == source_cr.SeriesInstanceUID
    assert series.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source_cr.SOPInstanceUID


def test_sr_for_an_out_of_scope_input_says_not_applicable_and_why(source_cr, tmp_path):
    finding = Finding(status="not_applicable", finding="pneumonia", reason="modality MR is outside the model's scope")
    text = dsrdump(build_sr(source_cr, [finding], MODEL), tmp_path)
    assert '(385432009,SCT,"Not applicable")' in text
    assert "modality MR is outside the model's scope" in text
    assert "Calibrated score" not in text


def test_uids_are_derived_from_source_model_and_kind_so_a_retry_makes_no_second_object(source_cr):
    first = build_sr(source_cr, [POSITIVE], MODEL)
    again = build_sr(source_cr, [POSITIVE], MODEL)
    image = build_sc(source_cr, small_xray(1, 384), [POSITIVE], MODEL)
    other_model = build_sr(source_cr, [POSITIVE], ModelIdentity("pneumonia-cnn", "1.3.0", "7a" * 32))
    assert first.SOPInstanceUID == again.SOPInstanceUID and first.SeriesInstanceUID == again.SeriesInstanceUID
    assert len({first.SOPInstanceUID, image.SOPInstanceUID, other_model.SOPInstanceUID, source_cr.SOPInstanceUID}) == 4
    for uid in (first.SOPInstanceUID, first.SeriesInstanceUID, image.SOPInstanceUID):
        assert pydicom.uid.UID(uid).is_valid and uid.startswith("2.25.")


def test_secondary_capture_shows_the_image_with_result_and_disclaimer_burned_in(source_cr):
    pixels = decode_dicom_dataset(source_cr, "cr").pixels
    sc = build_sc(source_cr, pixels, [POSITIVE], MODEL)
    image = sc.pixel_array
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert sc.StudyInstanceUID == source_cr.StudyInstanceUID and sc.PatientName == source_cr.PatientName
    assert sc.PhotometricInterpretation == "RGB" and image.shape[1] == pixels.shape[1]
    band = image.shape[0] - pixels.shape[0]
    assert band > 30  # the text sits on a band above the image: no anatomy is covered
    assert np.array_equal(image[band:, :, 0], pixels)  # below it, the source exactly as the model saw it
    text = image[:band].reshape(-1, 3)
    # The disclaimer lines are yellow, a positive decision red: both really drawn.
    assert (np.abs(text.astype(int) - YELLOW).sum(axis=1) < 60).sum() > 200
    assert (np.abs(text.astype(int) - RED).sum(axis=1) < 60).sum() > 100
    assert "not for diagnostic use" in sc.ImageComments.lower()


def test_a_heatmap_passed_to_the_writer_is_blended_over_the_image(source_cr):
    pixels = decode_dicom_dataset(source_cr, "cr").pixels
    heat = np.zeros((12, 12), dtype=np.float32)
    heat[2:6, 6:10] = 1.0  # the upper right region "explains" the decision
    sc = build_sc(source_cr, pixels, [POSITIVE], MODEL, heatmap=heat)
    image = sc.pixel_array.astype(int)
    band = image.shape[0] - pixels.shape[0]
    body = image[band:]
    colour = np.abs(body[..., 0] - body[..., 2])  # grey has none; the colour map adds it
    height, width = pixels.shape
    hot = colour[height * 3 // 12: height * 5 // 12, width * 7 // 12: width * 9 // 12].mean()
    cold = colour[height * 8 // 12:, : width // 3].mean()
    assert hot > 40 and cold < 2  # tinted where the heat is, untouched where there is none
    assert "HEATMAP" in sc.ImageType
    with pytest.raises(ValueError):
        build_sc(source_cr, pixels, [POSITIVE], MODEL, heatmap=np.full((4, 4), np.nan))


def test_write_objects_turns_result_payloads_into_one_sr_and_one_sc(source_cr):
    payload = {"status": "classified", "class": "normal", "score": 0.12, "threshold": 0.41, "positive": False,
               "model": {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256, "format": MODEL.format}}
    pixels = decode_dicom_dataset(source_cr, "cr").frames
    objects = write_objects(source_cr, pixels, [payload], "pneumonia", "dev1")
    assert [kind for _, kind, _ in objects] == ["sr", "sc"]
    for uid, _, data in objects:
        written = pydicom.dcmread(pydicom.filebase.DicomBytesIO(data))
        assert written.SOPInstanceUID == uid and written.file_meta.MediaStorageSOPInstanceUID == uid
    again = write_objects(source_cr, pixels, [payload], "pneumonia", "dev1")
    assert [uid for uid, _, _ in again] == [uid for uid, _, _ in objects]


def test_an_input_judged_out_of_scope_without_pixels_gets_an_sr_only(source_cr, tmp_path):
    payload = {"status": "not_applicable", "reason": "body part SKULL is outside the model's scope",
               "model": {"name": MODEL.name, "version": MODEL.version, "sha256": MODEL.sha256}}
    objects = write_objects(source_cr, [], [payload], "pneumonia", "dev1")
    assert [kind for _, kind, _ in objects] == ["sr"]
    text = dsrdump(pydicom.dcmread(pydicom.filebase.DicomBytesIO(objects[0][2])), tmp_path)
    assert '"Not applicable")' in text and "body part SKULL is outside the model's scope" in text


def test_one_result_per_frame_gives_one_group_per_frame_referencing_it(tmp_path):
    stack = np.stack([small_xray(i, 128) for i in range(3)])
    cine = write_xray_dicom(tmp_path / "cine.dcm", stack, modality="US", sop_class="1.2.840.10008.5.1.4.1.1.3.1",
                            bits=8, tags=PHI)
    old_style = write_xray_dicom(tmp_path / "sc3.dcm", stack, modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7",
                                 bits=8, tags=PHI)  # a single-frame IOD with 3 frames: no frame reference
    findings = [Finding(status="classified", finding="pneumonia", label="normal", score=0.1 * i, threshold=0.41,
                        positive=False, frame_index=i) for i in range(3)]
    text = dsrdump(build_sr(pydicom.dcmread(cine), findings, MODEL), tmp_path)
    assert text.count('"Measurement Group")') == 3
    for frame in (1, 2, 3):
        assert f"[frame {frame}]. " in text
    for frame in (1, 2, 3):  # each group references its own frame of the source
        assert f'"Source of Measurement")=(USm image,,{frame})' in text
    text = dsrdump(build_sr(pydicom.dcmread(old_style), findings, MODEL), tmp_path)
    assert text.count('"Measurement Group")') == 3 and "[frame 3]. " in text
