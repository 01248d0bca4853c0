"""The bundle a device trusts: every file hashed, tampering refused, signatures checked."""
from __future__ import annotations

import json
import shutil

import jsonschema
import pytest
from click.testing import CliRunner

from medge.edge.bundle import MANIFEST_NAME, SIGNATURE_NAME, generate_keypair, load_bundle, write_manifest
from medge.edge.errors import BundleError
from medge.edge.schemas import load_schema
from medge.main import cli


@pytest.fixture
def bundle_copy(int8_bundle, tmp_path):
    target = tmp_path / "bundle"
    shutil.copytree(int8_bundle, target)
    return target


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    folder = tmp_path_factory.mktemp("keys")
    generate_keypair(folder / "site.key", folder / "site.pub")
    generate_keypair(folder / "other.key", folder / "other.pub")
    return folder


def sign(bundle, key):
    """Re-sign a bundle the way `medge convert --sign-key` does: manifest rewritten and signed."""
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    write_manifest(bundle, manifest, private_key=key)


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_manifest_holds_everything_the_device_needs_and_follows_its_schema(int8_bundle, trained_run):
    manifest = json.loads((int8_bundle / MANIFEST_NAME).read_text())
    jsonschema.validate(manifest, load_schema("bundle"))
    metrics = json.loads((trained_run / "metrics.json").read_text())
    bundle = load_bundle(int8_bundle)
    assert bundle.classes == metrics["classes"] == ["normal", "pneumonia"]
    assert bundle.threshold == pytest.approx(metrics["threshold"])
    assert bundle.positive_class == "pneumonia"
    assert bundle.spec.to_dict() == metrics["preprocessing"]
    artifact = bundle.artifact()
    assert artifact.format == "tflite-int8" and artifact.file.is_file()
    assert artifact.input.dtype == "int8" and artifact.input.scale > 0
    assert artifact.output.dtype == "int8" and artifact.output.scale > 0
    assert set(manifest["files"]) == {"model_int8.tflite", "conversion_report.json", "comparison.png"}
    assert manifest["gate"]["passed"] is True and manifest["gate"]["n_images"] > 100
    assert {"auc", "agreement", "latency_ms"} <= set(artifact.gate)
    assert "not for diagnostic use" in manifest["disclaimer"]


@pytest.mark.parametrize("damage", ["modified byte", "truncated", "missing", "extra file"])
def test_tampered_bundle_is_refused_naming_the_file(bundle_copy, damage):
    model = bundle_copy / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    if damage == "modified byte":
        data[len(data) // 2] ^= 0x01
        model.write_bytes(bytes(data))
    elif damage == "truncated":
        model.write_bytes(bytes(data[: len(data) - 100]))
    elif damage == "missing":
        model.unlink()
    else:
        (bundle_copy / "extra.tflite").write_bytes(bytes(data))
    with pytest.raises(BundleError) as error:
        load_bundle(bundle_copy)
    message = str(error.value)
    named = "extra.tflite" if damage == "extra file" else "model_int8.tflite"
    assert named in message
    assert {"modified byte": "sha256", "truncated": "truncated", "missing": "missing",
            "extra file": "not in its manifest"}[damage] in message
    result = run_cli("bundle", "verify", bundle_copy)
    assert result.exit_code == 1 and "Error:" in result.output and named in result.output


def test_a_folder_without_manifest_or_with_a_corrupt_one_is_not_a_bundle(bundle_copy, tmp_path):
    (bundle_copy / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(BundleError, match="corrupt"):
        load_bundle(bundle_copy)
    (bundle_copy / MANIFEST_NAME).unlink()
    with pytest.raises(BundleError, match="medge.json is missing"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nowhere")


def test_signature_good_wrong_key_and_tampered_manifest(bundle_copy, keys):
    sign(bundle_copy, keys / "site.key")
    bundle = load_bundle(bundle_copy, public_key=keys / "site.pub", require_signature=True)
    assert bundle.signed_by and len(bundle.signed_by) == 16
    result = run_cli("bundle", "verify", bundle_copy, "--public-key", keys / "site.pub")
    assert result.exit_code == 0, result.output
    assert "signature: valid" in result.output

    with pytest.raises(BundleError, match="not with the given public key"):
        load_bundle(bundle_copy, public_key=keys / "other.pub")
    result = run_cli("bundle", "verify", bundle_copy, "--public-key", keys / "other.pub")
    assert result.exit_code == 1 and "not with the given public key" in result.output

    # Moving the threshold keeps every file hash valid; only the signature catches it.
    manifest_path = bundle_copy / MANIFEST_NAME
    manifest = json.loads(manifest_path.read_text())
    manifest["threshold"] = 0.01
    manifest_path.write_text(json.dumps(manifest, indent=2) + "\n")
    with pytest.raises(BundleError, match="manifest was modified after signing"):
        load_bundle(bundle_copy, public_key=keys / "site.pub")


def test_unsigned_bundle_is_refused_when_a_signature_is_required(bundle_copy, keys):
    assert not (bundle_copy / SIGNATURE_NAME).exists()
    with pytest.raises(BundleError, match="not signed"):
        load_bundle(bundle_copy, public_key=keys / "site.pub")
    result = run_cli("bundle", "verify", bundle_copy, "--require-signature")
    assert result.exit_code == 1 and "not signed" in result.output
    result = run_cli("bundle", "verify", bundle_copy)
    assert result.exit_code == 0 and "unsigned" in result.output


def test_keys_generate_writes_a_private_and_a_public_key(tmp_path):
    result = run_cli("keys", "generate", tmp_path / "lab")
    assert result.exit_code == 0, result.output
    private, public = tmp_path / "lab.key", tmp_path / "lab.pub"
    assert private.stat().st_mode & 0o077 == 0  # owner only
    assert b"PRIVATE KEY" in private.read_bytes() and b"PUBLIC KEY" in public.read_bytes()
    again = run_cli("keys", "generate", tmp_path / "lab")
    assert again.exit_code == 1 and "already exists" in again.output
    bad = tmp_path / "bad.pub"
    bad.write_text("not a key")
    with pytest.raises(BundleError, match="not a PEM public key"):
        from medge.edge.bundle import load_public_key

        load_public_key(bad)


def _rewrite_manifest(bundle, **changes):
    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest.update(changes)
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def test_manifest_cannot_point_outside_the_bundle_or_misreport_the_model(bundle_copy, tmp_path):
    model = bundle_copy / "model_int8.tflite"
    original = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    outside = tmp_path / "outside.tflite"
    outside.write_bytes(model.read_bytes())
    digest = original["files"]["model_int8.tflite"]
    for name in ("../outside.tflite", str(outside)):
        files = dict(original["files"], **{name: digest})
        _rewrite_manifest(bundle_copy, files=files)
        with pytest.raises(BundleError, match="outside the bundle"):
            load_bundle(bundle_copy)
    # A symlink inside the folder to a file elsewhere is outside the bundle too.
    model.unlink()
    model.symlink_to(outside)
    _rewrite_manifest(bundle_copy, files=original["files"])
    with pytest.raises(BundleError, match="outside the bundle"):
        load_bundle(bundle_copy)
    model.unlink()
    shutil.copyfile(outside, model)
    artifacts = [dict(original["artifacts"][0], sha256="0" * 64)]
    _rewrite_manifest(bundle_copy, artifacts=artifacts)
    with pytest.raises(BundleError, match="different sha256"):
        load_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, artifacts=original["artifacts"], files=["model_int8.tflite"])
    with pytest.raises(BundleError, match="'files' must map"):
        load_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, files=original["files"])
    load_bundle(bundle_copy)


def test_a_signature_file_in_a_subfolder_is_not_exempt(bundle_copy):
    (bundle_copy / "sub").mkdir()
    (bundle_copy / "sub" / SIGNATURE_NAME).write_text("{}")
    with pytest.raises(BundleError, match="sub/medge.sig is in the bundle but not in its manifest"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("changes, message", [
    ({"threshold": "0.5"}, "threshold must be a number"),
    ({"positive_class": "covid"}, "exactly 2 classes"),
    ({"classes": ["normal", "pneumonia", "covid"]}, "exactly 2 classes"),
])
def test_binary_manifest_needs_a_numeric_threshold_and_two_classes(bundle_copy, changes, message):
    _rewrite_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)
    result = run_cli("bundle", "verify", bundle_copy)
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_a_model_whose_output_does_not_match_the_classes_is_refused(bundle_copy):
    from medge.edge.classify import Classifier

    _rewrite_manifest(bundle_copy, task="multiclass", classes=["a", "b", "c"], threshold=None, positive_class=None)
    with pytest.raises(BundleError, match="outputs 1 values but the bundle lists 3 classes"):
        Classifier(load_bundle(bundle_copy))
