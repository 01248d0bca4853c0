"""Input sources of the edge daemon: one module each, all behind `base.Source`."""
from __future__ import annotations

from .base import InputItem, Outcome, Source


def build_sources(config, on_event=None) -> list[Source]:
    """The sources an `EdgeConfig` switches on. The DICOM receiver and camera modules are
    imported only when configured, so a device without pynetdicom or a camera never needs them.

    `on_event(level, kind, message)` receives the sources' own events (camera lost, DICOM
    association refused); the daemon publishes them on the error topic, named by source."""
    def events_of(name: str):
        if on_event is None:
            return None
        return lambda level, kind, message: on_event(level, kind, message, source=name)

    sources: list[Source] = []
    if config.watch.dir is not None:
        from .watch import WatchFolder

        sources.append(WatchFolder(config.watch.dir, processed_dir=config.processed_dir,
                                   rejected_dir=config.rejected_dir, stable_s=config.watch.stable_s,
                                   poll_s=config.watch.poll_s, max_pixels=config.log.max_pixels))
    if config.dicom.port is not None:
        from ..errors import ConfigError

        try:
            from .dicom_receiver import DicomReceiver
        except ImportError as error:
            raise ConfigError(f"dicom.port: the DICOM receiver needs pip install 'medge[dicom]' ({error})") from None
        sources.append(DicomReceiver(config.dicom.port, config.dicom.ae_title, config.dicom.allowed_callers,
                                     max_pixels=config.log.max_pixels, on_event=events_of("dicom")))
    if config.camera.src is not None:
        from .camera import CameraSource

        sources.append(CameraSource(config.camera.src, config.camera.fps, config.camera.roi,
                                    on_event=events_of("camera")))
    return sources


__all__ = ["InputItem", "Outcome", "Source", "build_sources"]
