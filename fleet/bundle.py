"""The bundle an operator deploys, as the archive that travels: a bundle folder (checked with
the device's own loader, then packed with edge/fleet/archive.py) or an archive packed before."""
from __future__ import annotations

import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from medge.edge.bundle import SIGNATURE_NAME, load_bundle, sha256_file
from medge.edge.errors import BundleError
from medge.edge.fleet.archive import pack_bundle, unpack_bundle


@dataclass(frozen=True)
class PackedBundle:
    archive: Path
    name: str
    version: str
    sha256: str  # of the archive: what the command names and the device checks
    size: int
    artifacts: tuple[str, ...]  # sha256 of each model file, as devices report their model
    signed: bool  # carries medge.sig (devices with bundle keys refuse it otherwise)

    def ref(self, url: str) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256, "size": self.size, "url": url}

    @property
    def model(self) -> dict:
        return {"name": self.name, "version": self.version, "sha256": self.sha256}


def prepare(source: str | Path, workdir: Path) -> PackedBundle:
    """Check `source` (a bundle folder or a .tar packed from one) and have its archive in
    `workdir`. A bundle that would not load on a device fails here, in one line."""
    source = Path(source)
    if source.is_dir():
        bundle = load_bundle(source)
        archive = pack_bundle(source, workdir / f"{bundle.name}-{bundle.version}.tar")
        folder = source
    elif source.is_file():
        if not tarfile.is_tarfile(source):
            raise BundleError(f"{source}: neither a bundle folder nor a bundle archive (.tar)")
        folder = unpack_bundle(source, Path(tempfile.mkdtemp(dir=workdir)) / "bundle")
        bundle = load_bundle(folder)
        archive = source
    else:
        raise BundleError(f"{source}: no such bundle folder or archive")
    return PackedBundle(archive=Path(archive), name=str(bundle.name), version=str(bundle.version),
                        sha256=sha256_file(archive), size=Path(archive).stat().st_size,
                        artifacts=tuple(artifact.sha256 for artifact in bundle.artifacts),
                        signed=(folder / SIGNATURE_NAME).is_file())
