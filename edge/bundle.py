"""The model bundle: a folder a device can trust, and the only way the device loads a model.

A bundle holds the model file(s), `medge.json` (the manifest: everything the device needs,
see edge/schemas/bundle.schema.json) and the conversion report. The manifest lists the
sha256 of every other file, so the whole folder is authenticated by the manifest alone; an
optional `medge.sig` is an Ed25519 signature over the exact bytes of `medge.json`.

`load_bundle` always re-hashes every file: a modified, truncated or missing file is refused
with a `BundleError` naming it. It never imports TensorFlow (see tests/test_layering.py);
`cryptography` is imported only when a signature is checked or made.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import BundleError
from .preprocess import PreprocessSpec

MANIFEST_NAME = "medge.json"
SIGNATURE_NAME = "medge.sig"
REPORT_NAME = "conversion_report.json"
BUNDLE_SCHEMA = "medge.bundle/1"
SIGNATURE_SCHEMA = "medge.signature/1"

# Which runtime family executes which file; the format names are the ones `medge convert
# --formats` accepts (the convert side keeps the full table, this is all the device needs).
RUNTIME_FAMILY = {".tflite": "tflite", ".onnx": "onnx"}


@dataclass(frozen=True)
class TensorInfo:
    """One model input or output as the runtime sees it; int8 tensors carry scale/zero point."""

    shape: tuple
    dtype: str
    name: str = ""
    scale: float | None = None
    zero_point: int | None = None
    # Outputs only: "sigmoid"/"softmax" when the model file ends at the logits and the runtime
    # applies the activation in float after dequantizing. An int8 *probability* output has a
    # fixed 1/256 grid that ties every confident case; int8 logits keep their order.
    activation: str | None = None

    @property
    def quantized(self) -> bool:
        return self.dtype in ("int8", "uint8") and bool(self.scale)

    def to_dict(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype,
                "scale": self.scale, "zero_point": self.zero_point, "activation": self.activation}

    @classmethod
    def from_dict(cls, data: dict) -> TensorInfo:
        return cls(shape=tuple(data["shape"]), dtype=data["dtype"], name=data.get("name", ""),
                   scale=data.get("scale"), zero_point=data.get("zero_point"), activation=data.get("activation"))


@dataclass(frozen=True)
class Artifact:
    """One model file of a bundle (or a bare model file, for tests and benchmarks)."""

    file: Path
    format: str
    sha256: str = ""
    input: TensorInfo | None = None
    output: TensorInfo | None = None
    gate: dict = field(default_factory=dict)

    @property
    def family(self) -> str:
        """"tflite" or "onnx": which runtimes can execute the file."""
        family = RUNTIME_FAMILY.get(self.file.suffix.lower())
        if family is None:
            raise BundleError(f"{self.file.name}: unknown model file type {self.file.suffix!r} (expected .tflite or .onnx)")
        return family

    @classmethod
    def from_file(cls, path: str | Path) -> Artifact:
        path = Path(path)
        family = RUNTIME_FAMILY.get(path.suffix.lower(), path.suffix.lstrip("."))
        return cls(file=path, format=family)


@dataclass
class Bundle:
    """A verified bundle. Only `load_bundle` builds one, so holding one means the hashes matched."""

    path: Path
    manifest: dict
    signed_by: str | None = None  # key id of the verified signature, if one was checked

    @property
    def name(self) -> str:
        return self.manifest["model"]["name"]

    @property
    def version(self) -> str:
        return str(self.manifest["model"]["version"])

    @property
    def classes(self) -> list[str]:
        return list(self.manifest["classes"])

    @property
    def task(self) -> str:
        return self.manifest["task"]

    @property
    def threshold(self) -> float | None:
        return self.manifest.get("threshold")

    @property
    def positive_class(self) -> str | None:
        return self.manifest.get("positive_class")

    @property
    def spec(self) -> PreprocessSpec:
        return PreprocessSpec.from_dict(self.manifest["preprocessing"])

    @property
    def applicability(self) -> dict | None:
        return self.manifest.get("applicability")

    @property
    def artifacts(self) -> list[Artifact]:
        return [_artifact_from_manifest(entry, self.path) for entry in self.manifest["artifacts"]]

    def artifact(self, format: str | None = None) -> Artifact:
        """The first (default) model artifact, or the one of the given format."""
        artifacts = self.artifacts
        if format is None:
            return artifacts[0]
        for artifact in artifacts:
            if artifact.format == format:
                return artifact
        have = ", ".join(a.format for a in artifacts)
        raise BundleError(f"{self.path}: bundle has no {format!r} model (it has: {have})")

    def not_applicable_reason(self, modality: str | None, body_part: str | None) -> str | None:
        """Why an input with these DICOM attributes is outside the model's declared scope, or None.

        Attributes the input does not carry (plain JPEG/PNG) are not held against it.
        """
        scope = self.applicability or {}
        modalities = [m.upper() for m in scope.get("modalities") or []]
        body_parts = [b.upper() for b in scope.get("body_parts") or []]
        if modalities and modality and modality.upper() not in modalities:
            return f"modality {modality} is outside the model's scope ({', '.join(modalities)})"
        if body_parts and body_part and body_part.upper() not in body_parts:
            return f"body part {body_part} is outside the model's scope ({', '.join(body_parts)})"
        return None


def _artifact_from_manifest(entry: dict, root: Path) -> Artifact:
    return Artifact(file=root / entry["file"], format=entry["format"], sha256=entry["sha256"],
                    input=TensorInfo.from_dict(entry["input"]), output=TensorInfo.from_dict(entry["output"]),
                    gate=entry.get("gate") or {})


# --------------------------------------------------------------------------- hashing


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def bundle_files(folder: Path) -> list[str]:
    """Every file a manifest must cover: all regular files except the manifest and signature."""
    names = []
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        # Only the top-level manifest and signature are exempt: a "sub/medge.sig" must be covered.
        if path.is_file() and name not in (MANIFEST_NAME, SIGNATURE_NAME):
            names.append(name)
    return names


# --------------------------------------------------------------------------- loading


def load_bundle(path: str | Path, public_key=None, require_signature: bool = False) -> Bundle:
    """Read and verify a bundle folder (or its medge.json). Raises BundleError naming what is wrong.

    `public_key` is a path to a PEM public key, PEM bytes or a loaded Ed25519 key; with it the
    signature must be present and valid. `require_signature` refuses unsigned bundles.
    """
    folder = Path(path)
    if folder.is_file() and folder.name == MANIFEST_NAME:
        folder = folder.parent
    if not folder.exists():
        raise BundleError(f"{folder}: bundle not found")
    if not folder.is_dir():
        raise BundleError(f"{folder}: a bundle is a folder (holding {MANIFEST_NAME}), not a file")
    manifest_path = folder / MANIFEST_NAME
    if not manifest_path.is_file():
        raise BundleError(f"{folder}: not a model bundle ({MANIFEST_NAME} is missing)")
    manifest_bytes = manifest_path.read_bytes()
    manifest = _parse_manifest(manifest_bytes, manifest_path)
    _verify_files(folder, manifest)
    signed_by = None
    signature_path = folder / SIGNATURE_NAME
    if public_key is not None or require_signature:
        if not signature_path.is_file():
            raise BundleError(f"{folder}: bundle is not signed ({SIGNATURE_NAME} is missing)")
    if public_key is not None:
        signed_by = verify_signature(manifest_bytes, signature_path, load_public_key(public_key))
    elif require_signature:
        raise BundleError(f"{folder}: a signature is required but no public key was given to check it")
    return Bundle(path=folder, manifest=manifest, signed_by=signed_by)


def _parse_manifest(data: bytes, path: Path) -> dict:
    try:
        manifest = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{path}: not valid JSON ({error}); the manifest is corrupt") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: manifest must be a JSON object")
    schema = manifest.get("schema")
    if schema != BUNDLE_SCHEMA:
        raise BundleError(f"{path}: unsupported bundle schema {schema!r} (this medge reads {BUNDLE_SCHEMA})")
    for key in ("model", "task", "classes", "preprocessing", "artifacts", "files"):
        if key not in manifest:
            raise BundleError(f"{path}: manifest has no {key!r}")
    if not manifest["artifacts"] or not isinstance(manifest["artifacts"], list):
        raise BundleError(f"{path}: manifest lists no model artifact")
    if not isinstance(manifest["files"], dict):
        raise BundleError(f"{path}: manifest 'files' must map each file name to its sha256")
    for entry in manifest["artifacts"]:
        if not isinstance(entry, dict):
            raise BundleError(f"{path}: every model artifact must be a JSON object")
        missing = [key for key in ("file", "format", "sha256", "input", "output") if key not in entry]
        if missing:
            raise BundleError(f"{path}: model artifact {entry.get('file', '?')!r} has no {missing[0]!r}")
    if manifest["task"] == "binary" and (manifest.get("threshold") is None or not manifest.get("positive_class")):
        raise BundleError(f"{path}: a binary model needs 'threshold' and 'positive_class'")
    threshold, classes = manifest.get("threshold"), manifest["classes"]
    if threshold is not None and (isinstance(threshold, bool) or not isinstance(threshold, (int, float))):
        raise BundleError(f"{path}: threshold must be a number, not {threshold!r}")
    if manifest["task"] == "binary":
        if not isinstance(classes, list) or len(classes) != 2 or manifest["positive_class"] not in classes:
            raise BundleError(f"{path}: a binary model needs exactly 2 classes including positive_class "
                              f"{manifest['positive_class']!r} (has {classes!r})")
    try:
        PreprocessSpec.from_dict(manifest["preprocessing"])
    except Exception as error:
        raise BundleError(f"{path}: invalid preprocessing spec ({error})") from None
    return manifest


def _verify_files(folder: Path, manifest: dict) -> None:
    files = manifest["files"]
    for entry in manifest["artifacts"]:
        if not isinstance(entry.get("file"), str) or entry["file"] not in files:
            raise BundleError(f"{folder}: model file {entry.get('file')!r} is not covered by the manifest's hashes")
        if entry.get("sha256") != files[entry["file"]]:
            # Artifact.sha256 is what results report as the model's identity: it must be the verified one.
            raise BundleError(f"{folder}: model file {entry['file']!r} has a different sha256 in 'artifacts' than in 'files'")
    for name, expected in files.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise BundleError(f"{folder}: manifest names a file outside the bundle ({name!r})")
        if not target.is_file():
            raise BundleError(f"{folder}: {name} is missing from the bundle")
        size = (manifest.get("file_sizes") or {}).get(name)
        if size is not None and target.stat().st_size != size:
            raise BundleError(
                f"{folder}: {name} is {target.stat().st_size} bytes, the manifest says {size} (truncated or replaced); refusing to load")
        if sha256_file(target) != expected:
            raise BundleError(f"{folder}: {name} does not match its sha256 in {MANIFEST_NAME} (modified or corrupt); refusing to load")
    extra = sorted(set(bundle_files(folder)) - set(files))
    if extra:
        raise BundleError(f"{folder}: {extra[0]} is in the bundle but not in its manifest (added after signing?)")


# --------------------------------------------------------------------------- writing


def write_manifest(folder: str | Path, manifest: dict, private_key=None) -> Path:
    """Hash every file in `folder` into the manifest, write medge.json, and sign it if a key is given.

    Written last, so a folder without medge.json is never mistaken for a finished bundle.
    """
    folder = Path(folder)
    names = bundle_files(folder)
    manifest = dict(manifest, schema=BUNDLE_SCHEMA)
    manifest["files"] = {name: sha256_file(folder / name) for name in names}
    manifest["file_sizes"] = {name: (folder / name).stat().st_size for name in names}
    data = (json.dumps(manifest, indent=2, sort_keys=False) + "\n").encode()
    signature_path = folder / SIGNATURE_NAME
    if signature_path.exists():
        signature_path.unlink()
    if private_key is not None:
        key = load_private_key(private_key)
        signature_path.write_text(json.dumps(sign_bytes(data, key), indent=2) + "\n")
    manifest_path = folder / MANIFEST_NAME
    temporary = folder / (MANIFEST_NAME + ".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, manifest_path)
    return manifest_path


# --------------------------------------------------------------------------- signing


def _crypto():
    try:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import ed25519
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise BundleError("signature support needs the 'cryptography' package (pip install 'medge[edge]')") from None
    return ed25519, serialization, InvalidSignature


def key_id(public_key) -> str:
    """A short fingerprint of an Ed25519 public key: sha256 of its raw bytes, 16 hex digits."""
    _, serialization, _ = _crypto()
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def generate_keypair(private_path: str | Path, public_path: str | Path) -> str:
    """Write a new Ed25519 key pair as PEM (private key readable by the owner only); returns its key id."""
    ed25519, serialization, _ = _crypto()
    private_key = ed25519.Ed25519PrivateKey.generate()
    private_pem = private_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption())
    public_pem = private_key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo)
    private_path, public_path = Path(private_path), Path(public_path)
    descriptor = os.open(private_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(private_pem)
    public_path.write_bytes(public_pem)
    return key_id(private_key.public_key())


def _read_key_bytes(source, what: str) -> bytes:
    if isinstance(source, bytes):
        return source
    path = Path(source)
    try:
        return path.read_bytes()
    except OSError as error:
        raise BundleError(f"{path}: cannot read {what} ({error.strerror or error})") from None


def load_private_key(source):
    ed25519, serialization, _ = _crypto()
    if isinstance(source, ed25519.Ed25519PrivateKey):
        return source
    try:
        key = serialization.load_pem_private_key(_read_key_bytes(source, "private key"), password=None)
    except (ValueError, TypeError) as error:
        raise BundleError(f"{source}: not a PEM private key ({error})") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise BundleError(f"{source}: not an Ed25519 private key")
    return key


def load_public_key(source):
    ed25519, serialization, _ = _crypto()
    if isinstance(source, ed25519.Ed25519PublicKey):
        return source
    data = _read_key_bytes(source, "public key")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        try:  # a private key file also holds the public key
            key = serialization.load_pem_private_key(data, password=None).public_key()
        except (ValueError, TypeError) as error:
            raise BundleError(f"{source}: not a PEM public key ({error})") from None
    if not isinstance(key, ed25519.Ed25519PublicKey):
        raise BundleError(f"{source}: not an Ed25519 public key")
    return key


def sign_bytes(data: bytes, private_key) -> dict:
    """The content of medge.sig for `data` (the exact bytes of medge.json)."""
    key = load_private_key(private_key)
    return {"schema": SIGNATURE_SCHEMA, "algorithm": "ed25519", "key_id": key_id(key.public_key()),
            "signature": base64.b64encode(key.sign(data)).decode()}


def verify_signature(data: bytes, signature_path: Path, public_key) -> str:
    """Check medge.sig against `data`; returns the key id, raises BundleError when it does not match."""
    _, _, InvalidSignature = _crypto()
    try:
        record = json.loads(signature_path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{signature_path}: unreadable signature file ({error})") from None
    if record.get("algorithm") != "ed25519":
        raise BundleError(f"{signature_path}: unsupported signature algorithm {record.get('algorithm')!r}")
    expected_id = key_id(public_key)
    try:
        public_key.verify(signature, data)
    except InvalidSignature:
        if record.get("key_id") and record["key_id"] != expected_id:
            raise BundleError(
                f"{signature_path.parent}: signature was made with key {record['key_id']}, not with the given public key "
                f"{expected_id}; refusing to load") from None
        raise BundleError(
            f"{signature_path.parent}: signature does not match {MANIFEST_NAME} (the manifest was modified after signing); "
            "refusing to load") from None
    return expected_id
