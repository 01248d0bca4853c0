"""The bundle a device trusts: every file hashed, tampering refused, signatures checked."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import jsonschema
import pytest
from click.testing import CliRunner

from medge.data import chest_xray_sample_files
from medge.edge.bundle import MANIFEST_NAME, SIGNATURE_NAME, generate_keypair, load_bundle, write_manifest
from medge.edge.errors import BundleError
from medge.edge.manifest import Manifest
from medge.edge.schemas import load_schema
from medge.main import cli
from tests.assets.make_bundles import INT8 as COMMITTED_INT8
from tests.assets.make_bundles import ONNX_INT8 as COMMITTED_ONNX_INT8


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


def test_manifest_holds_everything_the_device_needs_and_follows_its_schema(converted_int8_bundle, trained_run):
    manifest = json.loads((converted_int8_bundle / MANIFEST_NAME).read_text())
    jsonschema.validate(manifest, load_schema("bundle"))
    # convert writes exactly the typed manifest the device reads: every field, nothing else.
    assert Manifest.from_dict(manifest).to_dict() == manifest
    metrics = json.loads((trained_run / "metrics.json").read_text())
    bundle = load_bundle(converted_int8_bundle)
    assert bundle.classes == metrics["classes"] == ["normal", "pneumonia"]
    assert bundle.threshold == pytest.approx(metrics["threshold"])
    assert bundle.positive_class == "pneumonia"
    assert bundle.spec.to_dict() == metrics["preprocessing"]
    artifact = bundle.artifact()
    assert artifact.format == "tflite-int8" and artifact.file.is_file()
    assert artifact.input.dtype == "int8" and artifact.input.scale > 0
    assert artifact.output.dtype == "int8" and artifact.output.scale > 0
    # selftest.npz: the on-device self-test's reference set (edge/fleet/selftest.py), signed with the rest
    assert set(manifest["files"]) - {"ood.npz"} == {"model_int8.tflite", "conversion_report.json", "comparison.png",
                                                   "selftest.npz"}
    assert manifest["self_test"]["file"] == "selftest.npz" and manifest["self_test"]["inputs"] > 0
    assert manifest["gate"]["passed"] is True and manifest["gate"]["n_images"] > 100
    assert {"auc", "agreement", "latency_ms"} <= set(artifact.gate)
    assert "not for diagnostic use" in manifest["disclaimer"]


@pytest.mark.parametrize("committed", [COMMITTED_INT8, COMMITTED_ONNX_INT8], ids=lambda path: path.name)
def test_the_committed_bundles_still_load_verify_and_run_with_this_code(committed):
    """A change to the manifest or the bundle format must come with regenerated test bundles
    (python -m tests.assets.make_bundles), or this fails: the device tests run on them."""
    manifest = json.loads((committed / MANIFEST_NAME).read_text())
    jsonschema.validate(manifest, load_schema("bundle"))
    assert Manifest.from_dict(manifest).to_dict() == manifest, "stale: rerun python -m tests.assets.make_bundles"
    bundle = load_bundle(committed)
    assert bundle.classes == ["normal", "pneumonia"] and bundle.positive_class == "pneumonia"
    assert bundle.artifact().format == {"pneumonia-int8": "tflite-int8", "pneumonia-onnx-int8": "onnx-int8"}[committed.name]
    assert sum(path.stat().st_size for path in committed.rglob("*")) < 500_000  # both together < 1 MB
    from medge.edge.classify import Classifier
    from medge.edge.preprocess import decode_image

    classifier = Classifier(bundle)
    scores = [classifier.classify(decode_image(path).pixels).score for path in chest_xray_sample_files()[:4]]
    assert all(0.0 <= score <= 1.0 for score in scores)


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

    with pytest.raises(BundleError, match="which is not a trusted key"):
        load_bundle(bundle_copy, public_key=keys / "other.pub")
    result = run_cli("bundle", "verify", bundle_copy, "--public-key", keys / "other.pub")
    assert result.exit_code == 1 and "which is not a trusted key" in result.output

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
    with pytest.raises(BundleError, match=r"medge.json: files: \['model_int8.tflite'\] is not of type 'object'"):
        load_bundle(bundle_copy)
    _rewrite_manifest(bundle_copy, files=original["files"])
    load_bundle(bundle_copy)


def test_a_signature_file_in_a_subfolder_is_not_exempt(bundle_copy):
    (bundle_copy / "sub").mkdir()
    (bundle_copy / "sub" / SIGNATURE_NAME).write_text("{}")
    with pytest.raises(BundleError, match="sub/medge.sig is in the bundle but not in its manifest"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("changes, message", [
    ({"threshold": "0.5"}, "threshold: '0.5' is not of type 'number'"),
    ({"threshold": None}, "threshold: None is not of type 'number'"),
    ({"threshold": 1.5}, "threshold: 1.5 is greater than the maximum of 1"),
    ({"positive_class": "covid"}, "positive_class 'covid' is not one of the classes"),
    ({"classes": ["normal", "pneumonia", "covid"]}, "classes: ['normal', 'pneumonia', 'covid'] is too long"),
    ({"task": "regression"}, "task: 'regression' is not one of ['binary', 'multiclass']"),
    ({"model": {"version": "1"}}, "model: 'name' is a required property"),
    ({"schema": "medge.bundle/2"}, "unsupported bundle schema 'medge.bundle/2'"),
])
def test_a_manifest_off_its_schema_is_refused_in_one_line_naming_the_field(bundle_copy, changes, message):
    _rewrite_manifest(bundle_copy, **changes)
    with pytest.raises(BundleError, match=re.escape(message)):
        load_bundle(bundle_copy)
    result = run_cli("bundle", "verify", bundle_copy)
    assert result.exit_code == 1 and message in result.output and len(result.output.strip().splitlines()) == 1


def test_the_writer_refuses_what_a_device_would_refuse(bundle_copy):
    manifest = json.loads((bundle_copy / MANIFEST_NAME).read_text())
    before = (bundle_copy / MANIFEST_NAME).read_bytes()
    with pytest.raises(BundleError, match=re.escape("artifacts[0]: 'runtime' is a required property")):
        write_manifest(bundle_copy, dict(manifest, artifacts=[{k: v for k, v in manifest["artifacts"][0].items()
                                                              if k != "runtime"}]))
    assert (bundle_copy / MANIFEST_NAME).read_bytes() == before  # nothing half-written


def test_a_model_whose_output_does_not_match_the_classes_is_refused(bundle_copy):
    from medge.edge.classify import Classifier

    _rewrite_manifest(bundle_copy, task="multiclass", classes=["a", "b", "c"], threshold=None, positive_class=None)
    with pytest.raises(BundleError, match="outputs 1 values but the bundle lists 3 classes"):
        Classifier(load_bundle(bundle_copy))


# --------------------------------------------------------------------------- the device's trusted keys


def key_id_of(public_key_path) -> str:
    from medge.edge.bundle import key_id, load_public_key

    return key_id(load_public_key(public_key_path))


def edge_toml(folder, bundle, keys: list, required: bool = True, broker_port: int = 1) -> Path:
    """A device configuration like deploy/edge.example.toml, with relative paths as an admin writes them."""
    (folder / "in").mkdir(exist_ok=True)
    listed = ", ".join(f'"{key}"' for key in keys)
    path = folder / "edge.toml"
    path.write_text(f'bundle = "{bundle}"\nsite = "lab"\ndevice = "dev1"\n'
                    f'[mqtt]\nbroker = "mqtt://127.0.0.1:{broker_port}"\nheartbeat_s = 1\n'
                    f'[watch]\ndir = "in"\n[state]\ndir = "state"\n'
                    f'[signature]\ntrusted_keys = [{listed}]\nrequired = {str(required).lower()}\n')
    return path


@pytest.fixture
def site(tmp_path, int8_bundle, keys):
    """A device folder: the bundle signed with the site key, keys/{site,other}.pub, and edge.toml trusting site.pub."""
    shutil.copytree(int8_bundle, tmp_path / "bundle")
    sign(tmp_path / "bundle", keys / "site.key")
    shutil.copytree(keys, tmp_path / "keys")
    edge_toml(tmp_path, "bundle", ["keys/site.pub"])
    return tmp_path


def configured(site_folder):
    from medge.edge.config import load_config

    config = load_config(site_folder / "edge.toml", env={})
    return load_bundle(config.bundle, trusted_keys=config.signature.trusted_keys)


def edge_check(site_folder):
    return run_cli("edge", "check", "--config", site_folder / "edge.toml")


def bundle_line(result) -> str:
    return next(line for line in result.output.splitlines() if " bundle: " in line)


def test_a_bundle_signed_by_a_trusted_key_loads_and_check_names_the_key(site, keys):
    bundle = configured(site)
    assert bundle.signed_by == key_id_of(keys / "site.pub")
    assert bundle_line(edge_check(site)).startswith("ok   bundle: ") and bundle.signed_by in bundle_line(edge_check(site))


def test_a_signed_bundle_whose_threshold_was_edited_is_refused(site):
    # The attack of issue 12: every file hash still matches, so only the signature can catch it.
    _rewrite_manifest(site / "bundle", threshold=0.0001)
    with pytest.raises(BundleError, match="signature does not match medge.json"):
        configured(site)
    line = bundle_line(edge_check(site))
    assert line.startswith("FAIL bundle: ") and "signature does not match" in line


def test_a_swapped_model_with_its_hash_updated_is_refused(site):
    model = site / "bundle" / "model_int8.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF  # another model; the attacker updates medge.json to match it
    model.write_bytes(bytes(data))
    manifest = json.loads((site / "bundle" / MANIFEST_NAME).read_text())
    from medge.edge.bundle import sha256_file

    digest = sha256_file(model)
    manifest["files"]["model_int8.tflite"] = manifest["artifacts"][0]["sha256"] = digest
    (site / "bundle" / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    load_bundle(site / "bundle")  # every hash matches: without a trusted key the swap would run
    with pytest.raises(BundleError, match="signature does not match medge.json"):
        configured(site)
    assert "signature does not match" in bundle_line(edge_check(site))


def test_an_unsigned_bundle_is_refused_when_keys_are_configured(site):
    (site / "bundle" / SIGNATURE_NAME).unlink()
    with pytest.raises(BundleError, match="bundle is not signed"):
        configured(site)
    assert "bundle is not signed" in bundle_line(edge_check(site))


def test_a_bundle_signed_by_an_untrusted_key_is_refused(site, keys):
    sign(site / "bundle", keys / "other.key")
    with pytest.raises(BundleError, match=f"made with key {key_id_of(keys / 'other.pub')}, which is not a trusted key"):
        configured(site)


def test_key_rotation_two_trusted_keys_and_the_bundle_signed_by_the_second(site, keys):
    edge_toml(site, "bundle", ["keys/site.pub", "keys/other.pub"])
    sign(site / "bundle", keys / "other.key")
    assert configured(site).signed_by == key_id_of(keys / "other.pub")
    sign(site / "bundle", keys / "site.key")  # bundles signed with the old key keep working meanwhile
    assert configured(site).signed_by == key_id_of(keys / "site.pub")


def test_required_signature_without_trusted_keys_is_a_config_error(site):
    from medge.edge.config import load_config
    from medge.edge.errors import ConfigError

    edge_toml(site, "bundle", [])
    with pytest.raises(ConfigError, match=r"^signature\.trusted_keys: signature\.required is set"):
        load_config(site / "edge.toml", env={})
    # The systemd unit's MEDGE_SIGNATURE_REQUIRED=true has the same effect as the file's key.
    edge_toml(site, "bundle", [], required=False)
    with pytest.raises(ConfigError, match=r"^signature\.trusted_keys"):
        load_config(site / "edge.toml", env={"MEDGE_SIGNATURE_REQUIRED": "true"})


@pytest.mark.parametrize("attack", ["threshold edited", "unsigned", "no trusted key"])
def test_the_daemon_refuses_to_start_with_one_line(site, attack):
    import subprocess
    import sys

    if attack == "threshold edited":
        _rewrite_manifest(site / "bundle", threshold=0.0001)
        expected = "signature does not match medge.json"
    elif attack == "unsigned":
        (site / "bundle" / SIGNATURE_NAME).unlink()
        expected = "bundle is not signed"
    else:
        edge_toml(site, "bundle", [])
        expected = "signature.trusted_keys: signature.required is set"
    done = subprocess.run([sys.executable, "-m", "medge", "edge", "run", "--config", str(site / "edge.toml")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], done.stderr


def test_the_status_message_names_the_key_that_signed_the_running_bundle(site, keys, broker, edge_daemon):
    from tests.fixtures.broker import Subscriber

    edge_toml(site, "bundle", ["keys/site.pub", "keys/other.pub"], broker_port=broker.port)
    consumer = Subscriber(broker.port, "medge/lab/dev1/status")
    try:
        daemon = edge_daemon(site / "bundle", broker.url, "--config", str(site / "edge.toml"), site="lab")
        consumer.wait_for(lambda s: any(p["state"] == "online" for p in s.payloads("status")), 30, "online")
        online = next(p for p in consumer.payloads("status") if p["state"] == "online")
        jsonschema.validate(online, load_schema("status"))
        assert online["signed_by"] == key_id_of(keys / "site.pub")
        assert daemon.stop() == 0
    finally:
        consumer.close()


def test_the_shipped_deploy_config_and_systemd_unit_require_a_signed_bundle(tmp_path):
    import tomllib

    from medge.edge.config import load_config
    from medge.edge.errors import ConfigError

    deploy = Path(__file__).resolve().parents[1] / "deploy"
    example = tomllib.loads((deploy / "edge.example.toml").read_text())
    assert example["signature"]["required"] is True and example["signature"]["trusted_keys"]
    unit = (deploy / "systemd" / "medge-edge.service").read_text()
    environment = dict(line.split("=", 2)[1:] for line in unit.splitlines() if line.startswith("Environment="))
    assert environment["MEDGE_SIGNATURE_REQUIRED"] == "true"
    # Even an edge.toml that drops the [signature] section does not start an unsigned model under the unit.
    (tmp_path / "edge.toml").write_text('bundle = "b"\n[watch]\ndir = "in"\n')
    with pytest.raises(ConfigError, match=r"^signature\.trusted_keys"):
        load_config(tmp_path / "edge.toml", env=environment)
