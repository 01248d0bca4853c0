"""The model bundle: a folder a device can trust, and the only way the device loads a model.

A bundle holds the model file(s), `medge.json` (the manifest: everything the device needs,
typed in `medge.edge.manifest`, shaped by edge/schemas/bundle.schema.json) and the conversion
report. The manifest lists the
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
from .manifest import BUNDLE_SCHEMA, MANIFEST_NAME, Manifest, TensorInfo
from .preprocess import PreprocessSpec

SIGNATURE_NAME = "medge.sig"
REPORT_NAME = "conversion_report.json"
SIGNATURE_SCHEMA = "medge.signature/1"

# Which runtime family executes a model file, by its suffix (edge/runtime.py lists each
# family's runtimes). A convert format row (convert/formats.py) names its file, hence its family.
RUNTIME_FAMILY = {".tflite": "tflite", ".onnx": "onnx"}


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
    """A verified bundle. Only `load_bundle` builds one, so holding one means the hashes matched.

    The accessors below are shortcuts into the typed manifest, kept because most of the device
    reads a bundle through them.
    """

    path: Path
    manifest: Manifest
    signed_by: str | None = None  # key id of the verified signature, if one was checked

    @property
    def name(self) -> str:
        return self.manifest.model.name

    @property
    def version(self) -> str:
        return self.manifest.model.version

    @property
    def classes(self) -> list[str]:
        return list(self.manifest.classes)

    @property
    def task(self) -> str:
        return self.manifest.task

    @property
    def threshold(self) -> float | None:
        return self.manifest.threshold

    @property
    def positive_class(self) -> str | None:
        return self.manifest.positive_class

    @property
    def spec(self) -> PreprocessSpec:
        return self.manifest.preprocessing

    @property
    def artifacts(self) -> list[Artifact]:
        return [Artifact(file=self.path / entry.file, format=entry.format, sha256=entry.sha256, input=entry.input,
                         output=entry.output, gate=entry.gate) for entry in self.manifest.artifacts]

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
        scope = self.manifest.applicability
        modalities = [m.upper() for m in scope.modalities] if scope else []
        body_parts = [b.upper() for b in scope.body_parts] if scope else []
        if modalities and modality and modality.upper() not in modalities:
            return f"modality {modality} is outside the model's scope ({', '.join(modalities)})"
        if body_parts and body_part and body_part.upper() not in body_parts:
            return f"body part {body_part} is outside the model's scope ({', '.join(body_parts)})"
        return None


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


def load_bundle(path: str | Path, public_key=None, require_signature: bool = False, trusted_keys=()) -> Bundle:
    """Read and verify a bundle folder (or its medge.json). Raises BundleError naming what is wrong.

    `trusted_keys` (and `public_key`, one more) are paths to PEM public keys, PEM bytes or
    loaded Ed25519 keys: with any given, the bundle must carry a valid signature by one of them
    (several keys, so a site can rotate its signing key). `require_signature` alone refuses
    unsigned bundles.
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
    try:
        data = json.loads(manifest_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"{manifest_path}: not valid JSON ({error}); the manifest is corrupt") from None
    manifest = Manifest.from_dict(data, where=str(manifest_path))
    _verify_files(folder, manifest)
    keys = [load_public_key(key) for key in [*trusted_keys, *([public_key] if public_key is not None else [])]]
    signed_by = None
    signature_path = folder / SIGNATURE_NAME
    if keys or require_signature:
        if not signature_path.is_file():
            raise BundleError(f"{folder}: bundle is not signed ({SIGNATURE_NAME} is missing) and a signature is "
                              "required; refusing to load")
    if keys:
        signed_by = verify_signature(manifest_bytes, signature_path, keys)
    elif require_signature:
        raise BundleError(f"{folder}: a signature is required but no public key was given to check it")
    return Bundle(path=folder, manifest=manifest, signed_by=signed_by)


def _verify_files(folder: Path, manifest: Manifest) -> None:
    files = manifest.files
    for entry in manifest.artifacts:
        if entry.file not in files:
            raise BundleError(f"{folder}: model file {entry.file!r} is not covered by the manifest's hashes")
        if entry.sha256 != files[entry.file]:
            # Artifact.sha256 is what results report as the model's identity: it must be the verified one.
            raise BundleError(f"{folder}: model file {entry.file!r} has a different sha256 in 'artifacts' than in 'files'")
    for name, expected in files.items():
        target = (folder / name).resolve()
        if folder.resolve() not in target.parents:
            raise BundleError(f"{folder}: manifest names a file outside the bundle ({name!r})")
        if not target.is_file():
            raise BundleError(f"{folder}: {name} is missing from the bundle")
        size = manifest.file_sizes.get(name)
        if size is not None and target.stat().st_size != size:
            raise BundleError(
                f"{folder}: {name} is {target.stat().st_size} bytes, the manifest says {size} (truncated or replaced); refusing to load")
        if sha256_file(target) != expected:
            raise BundleError(f"{folder}: {name} does not match its sha256 in {MANIFEST_NAME} (modified or corrupt); refusing to load")
    extra = sorted(set(bundle_files(folder)) - set(files))
    if extra:
        raise BundleError(f"{folder}: {extra[0]} is in the bundle but not in its manifest (added after signing?)")


# --------------------------------------------------------------------------- writing


def write_manifest(folder: str | Path, manifest: Manifest | dict, private_key=None) -> Path:
    """Hash every file in `folder` into the manifest, write medge.json, and sign it if a key is given.

    The manifest is checked against the schema exactly as a device will check it, so nothing a
    device would refuse is ever written. Written last, so a folder without medge.json is never
    mistaken for a finished bundle.
    """
    folder = Path(folder)
    names = bundle_files(folder)
    data = manifest.to_dict() if isinstance(manifest, Manifest) else dict(manifest)
    data["schema"] = BUNDLE_SCHEMA
    data["files"] = {name: sha256_file(folder / name) for name in names}
    data["file_sizes"] = {name: (folder / name).stat().st_size for name in names}
    manifest_path = folder / MANIFEST_NAME
    data = Manifest.from_dict(data, where=str(manifest_path)).to_json()
    signature_path = folder / SIGNATURE_NAME
    if signature_path.exists():
        signature_path.unlink()
    if private_key is not None:
        key = load_private_key(private_key)
        signature_path.write_text(json.dumps(sign_bytes(data, key), indent=2) + "\n")
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


def verify_signature(data: bytes, signature_path: Path, public_keys) -> str:
    """Check medge.sig against `data` and the trusted key(s); returns the id of the key that signed.

    The key id written in medge.sig only picks which trusted key to try: it is not itself
    trusted, the Ed25519 check decides.
    """
    _, _, InvalidSignature = _crypto()
    keys = public_keys if isinstance(public_keys, (list, tuple)) else [public_keys]
    trusted = {key_id(key): key for key in keys}
    try:
        record = json.loads(signature_path.read_text())
        signature = base64.b64decode(record["signature"], validate=True)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise BundleError(f"{signature_path}: unreadable signature file ({error})") from None
    if record.get("algorithm") != "ed25519":
        raise BundleError(f"{signature_path}: unsupported signature algorithm {record.get('algorithm')!r}")
    claimed = record.get("key_id")
    candidates = [claimed] if claimed in trusted else list(trusted)
    for candidate in candidates:
        try:
            trusted[candidate].verify(signature, data)
        except InvalidSignature:
            continue
        return candidate
    if claimed and claimed not in trusted:
        raise BundleError(
            f"{signature_path.parent}: signature was made with key {claimed}, which is not a trusted key "
            f"({', '.join(trusted)}); refusing to load")
    raise BundleError(
        f"{signature_path.parent}: signature does not match {MANIFEST_NAME} (the manifest was modified after signing); "
        "refusing to load")
