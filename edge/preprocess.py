"""The one preprocessing implementation shared by training, conversion and the device.

Every image, whatever it came from (a MedMNIST array, a JPEG from a scanner export folder,
a 16-bit PNG, DICOM pixel data), goes through two steps:

1. `decode_image` turns the file into canonical *display pixels*: uint8, RGB channel order,
   shape (H, W) for grayscale or (H, W, 3) for colour, one array per frame. 16-bit data and
   DICOM are windowed into 8 bits here, so the model always sees what a radiologist's
   display would show.
2. `preprocess` turns display pixels into the model input described by a `PreprocessSpec`:
   colour mode, resize, normalisation, float32 (H, W, C).

The spec is saved with the trained model and inside every bundle, so the device reproduces
training's input bit for bit (same code, same OpenCV).
"""
from __future__ import annotations

import os
import stat
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputError

SPEC_VERSION = 1

INTERPOLATIONS = {
    "area": cv2.INTER_AREA,
    "linear": cv2.INTER_LINEAR,
    "cubic": cv2.INTER_CUBIC,
    "nearest": cv2.INTER_NEAREST,
}

# Per-channel mean/std in the 0..1 range, for backbones pretrained on ImageNet.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NORMALIZATIONS = ("unit", "symmetric", "imagenet", "raw")

# A chest X-ray is at most ~4k x 4k; anything far beyond is refused before decoding so a
# crafted file cannot exhaust a Raspberry Pi's memory.
DEFAULT_MAX_PIXELS = 64_000_000
# The largest file read at all: an uncompressed 16-bit DICOM at the pixel limit is 128 MB, so a
# bigger file is refused before a byte of it is read into memory.
DEFAULT_MAX_FILE_BYTES = 256 * 1024 * 1024

# Reduced JPEG decoding (libjpeg scales inside the inverse DCT: 1/2, 1/4, 1/8 of the pixels
# are ever built). "auto" takes the largest reduction whose image keeps JPEG_REDUCTION_MARGIN x
# the model's input size on both sides; "off" decodes every pixel. Measured with the 28x28 int8
# PneumoniaMNIST bundle on the bundled X-rays and test-split renderings scaled to sit exactly at
# the margin (the worst case; BENCHMARKS.md, issue 15): the largest calibrated-score change is
# 0.044 at 1.5x, 0.024 at 2x, 0.015 at 3x and 0.0065 at 4x. So 4x, a third of the 0.02 limit
# the conversion gate holds (convert/decode_check.py); every full-size X-ray still decodes at 1/8.
JPEG_REDUCTIONS = ("auto", "off")
JPEG_REDUCTION_MARGIN = 4.0
_REDUCED_FLAGS = {  # (factor, channels) -> imdecode flag: straight to the model's colour mode
    (1, 1): cv2.IMREAD_GRAYSCALE, (2, 1): cv2.IMREAD_REDUCED_GRAYSCALE_2,
    (4, 1): cv2.IMREAD_REDUCED_GRAYSCALE_4, (8, 1): cv2.IMREAD_REDUCED_GRAYSCALE_8,
    (1, 3): cv2.IMREAD_COLOR, (2, 3): cv2.IMREAD_REDUCED_COLOR_2,
    (4, 3): cv2.IMREAD_REDUCED_COLOR_4, (8, 3): cv2.IMREAD_REDUCED_COLOR_8,
}

DICOM_SUFFIXES = (".dcm", ".dicom")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")


@dataclass(frozen=True)
class PreprocessSpec:
    """How display pixels become model input. Serialised into metrics.json and medge.json."""

    height: int = 28
    width: int = 28
    channels: int = 1
    interpolation: str = "area"
    normalization: str = "unit"
    version: int = SPEC_VERSION
    # New specs decode JPEGs reduced ("auto", checked by the conversion gate); a spec saved
    # without the field (older runs and bundles) keeps the full decode it was validated with.
    jpeg_reduction: str = "auto"

    def __post_init__(self):
        if self.channels not in (1, 3):
            raise InputError(f"preprocessing: channels must be 1 or 3, not {self.channels}")
        if self.interpolation not in INTERPOLATIONS:
            raise InputError(f"preprocessing: unknown interpolation {self.interpolation!r}")
        if self.normalization not in NORMALIZATIONS:
            raise InputError(f"preprocessing: unknown normalization {self.normalization!r}")
        if self.height < 8 or self.width < 8:
            raise InputError(f"preprocessing: input size {self.height}x{self.width} is too small")
        if self.jpeg_reduction not in JPEG_REDUCTIONS:
            raise InputError(f"preprocessing: jpeg_reduction must be one of {', '.join(JPEG_REDUCTIONS)}, "
                             f"not {self.jpeg_reduction!r}")
        if self.version != SPEC_VERSION:
            raise InputError(f"preprocessing: spec version {self.version} is not supported (expected {SPEC_VERSION})")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.height, self.width, self.channels)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> PreprocessSpec:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        known.setdefault("jpeg_reduction", "off")  # saved before reduced decoding existed
        return cls(**known)


@dataclass
class DecodedImage:
    """Display pixels of one input (one array per frame) and the non-identifying facts about it."""

    frames: list[np.ndarray]
    kind: str  # "image" or "dicom"
    # Only technical DICOM attributes are ever copied here: never a patient tag.
    modality: str | None = None
    body_part: str | None = None
    sop_instance_uid: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def pixels(self) -> np.ndarray:
        return self.frames[0]


# --------------------------------------------------------------------------- decoding

# The model input the decoder may decode for, set around a source's `load()` (classify.analyse)
# so every source's decoder makes the bundle's choice without each source knowing the bundle.
_DECODING_FOR: ContextVar[PreprocessSpec | None] = ContextVar("medge_decoding_for", default=None)


@contextmanager
def decoding_for(spec: PreprocessSpec | None) -> Iterator[None]:
    """Within the block, `decode_image` without an explicit `spec` decodes for `spec`."""
    token = _DECODING_FOR.set(spec)
    try:
        yield
    finally:
        _DECODING_FOR.reset(token)


def jpeg_reduction_factor(width: int, height: int, spec: PreprocessSpec | None) -> int:
    """1, 2, 4 or 8: the largest JPEG reduction keeping JPEG_REDUCTION_MARGIN x the model's
    input on both sides (1: decode every pixel; always 1 when the spec says "off")."""
    if spec is None or spec.jpeg_reduction != "auto":
        return 1
    for factor in (8, 4, 2):
        # libjpeg's scaled size rounds up
        if (-(-height // factor) >= JPEG_REDUCTION_MARGIN * spec.height
                and -(-width // factor) >= JPEG_REDUCTION_MARGIN * spec.width):
            return factor
    return 1


def decode_image(source: str | Path | bytes, name: str | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, max_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 spec: PreprocessSpec | None = None) -> DecodedImage:
    """Decode a file (path or bytes) into display pixels. Raises InputError naming the file.

    Nothing is decoded before its cost is known: the file's size is checked before it is read
    (`max_bytes`) and the image's dimensions are read from its header before its pixels are
    decoded (`max_pixels`); formats whose header is not parsed here are refused.

    `spec` (default: the one `decoding_for` set, else none): the model input the pixels are for.
    When it allows JPEG reduction, a JPEG is decoded reduced and straight to the spec's colour
    mode (`jpeg_reduction_factor`); every other input decodes as without a spec.
    """
    if spec is None:
        spec = _DECODING_FOR.get()
    if isinstance(source, (str, Path)):
        path = Path(source)
        name = name or str(path)
        data = read_input_file(path, name, max_bytes)
    else:
        data = bytes(source)
        name = name or "<bytes>"
        if len(data) > max_bytes:
            raise InputError(f"{name}: file is {len(data)} bytes, over the limit of {max_bytes} (refused before decoding)")
    if not data:
        raise InputError(f"{name}: empty file (0 bytes)")
    if is_dicom(data, name):
        return decode_dicom_bytes(data, name, max_pixels=max_pixels)
    return DecodedImage(frames=[_decode_raster(data, name, max_pixels, spec)], kind="image")


def read_input_file(path: Path, name: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
    """The bytes of a regular file of at most `max_bytes`: never blocks on a FIFO, never reads
    a device or a file larger than the limit (a sparse 3 GB file costs nothing to refuse)."""
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer that never comes.
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise InputError(f"{name}: cannot read file ({error.strerror or error})") from None
    with os.fdopen(descriptor, "rb") as handle:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise InputError(f"{name}: not a regular file (a device, FIFO or socket is never read)")
        if info.st_size > max_bytes:
            raise InputError(f"{name}: file is {info.st_size} bytes, over the limit of {max_bytes} "
                             "(refused before reading)")
        try:
            data = handle.read(max_bytes + 1)  # a file still growing cannot slip past the limit
        except OSError as error:
            raise InputError(f"{name}: cannot read file ({error.strerror or error})") from None
    if len(data) > max_bytes:
        raise InputError(f"{name}: file is over the limit of {max_bytes} bytes (refused)")
    return data


def is_dicom(data: bytes, name: str = "") -> bool:
    return data[128:132] == b"DICM" or name.lower().endswith(DICOM_SUFFIXES)


def _decode_raster(data: bytes, name: str, max_pixels: int, spec: PreprocessSpec | None = None) -> np.ndarray:
    header = raster_header(data, name)
    if header.width * header.height > max_pixels:
        raise InputError(f"{name}: image is {header.width}x{header.height} pixels, over the limit of {max_pixels} "
                         "(refused before decoding)")
    buffer = np.frombuffer(data, dtype=np.uint8)
    # ANYDEPTH keeps 16-bit data; ANYCOLOR keeps grayscale as grayscale; EXIF orientation is
    # applied (OpenCV does so unless IMREAD_IGNORE_ORIENTATION is given, also when reduced).
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR
    if header.format == "JPEG" and spec is not None and spec.jpeg_reduction == "auto":
        flags = _REDUCED_FLAGS[(jpeg_reduction_factor(header.width, header.height, spec), spec.channels)]
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as error:
        raise InputError(f"{name}: not a readable image ({str(error).strip().splitlines()[-1]})") from None
    if image is None:
        raise InputError(f"{name}: not a readable image (corrupt, truncated or unsupported format)")
    if image.shape[0] * image.shape[1] > max_pixels:  # a header that lied (e.g. a later TIFF page)
        raise InputError(f"{name}: image is {image.shape[1]}x{image.shape[0]} pixels, over the limit of {max_pixels}")
    return to_display_pixels(image, name, bgr=True)


def to_display_pixels(image: np.ndarray, name: str = "<array>", bgr: bool = False) -> np.ndarray:
    """Any 8/16-bit/float grayscale, RGB or RGBA array -> uint8 (H, W) or (H, W, 3) RGB."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 3 and image.shape[2] == 4:
        image = image[:, :, :3]  # alpha carries no diagnostic content
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise InputError(f"{name}: unsupported image shape {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"{name}: image has no pixels")
    if image.dtype != np.uint8:
        image = window_to_uint8(image, name=name)
    if image.ndim == 3 and bgr:
        image = cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    return np.ascontiguousarray(image)


def window_to_uint8(values: np.ndarray, center: float | None = None, width: float | None = None,
                    name: str = "<array>") -> np.ndarray:
    """Linear window into 0..255: the given window, else the data's own min..max.

    Pixel data holding NaN or infinity is refused: no window makes a picture of it. The
    arithmetic is float32 as always, but done through a lookup table for 16-bit data and row
    by row otherwise, so a large image costs its uint8 result, not several float copies.
    """
    values = np.asarray(values)
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    # min/max of the float32 values (rounding is monotonic, so float32(min) == min(float32)).
    data_low, data_high = float(np.float32(np.min(values))), float(np.float32(np.max(values)))
    if not (np.isfinite(data_low) and np.isfinite(data_high)):
        raise InputError(f"{name}: pixel data contains NaN or infinite values (refused: no picture to classify)")
    if center is None or width is None or width <= 1:
        low, high = data_low, data_high
    else:
        low, high = center - width / 2.0, center + width / 2.0
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scale = 255.0 / (high - low)

    def convert(block: np.ndarray) -> np.ndarray:
        return np.clip(np.rint((block.astype(np.float32) - low) * scale), 0, 255).astype(np.uint8)

    if values.dtype in (np.uint8, np.uint16):
        return convert(np.arange(int(np.iinfo(values.dtype).max) + 1))[values]
    out = np.empty(values.shape, dtype=np.uint8)
    rows = max(1, (1 << 22) // max(1, values[0].size))  # ~4M samples per step
    for start in range(0, len(values), rows):
        out[start:start + rows] = convert(values[start:start + rows])
    return out


@dataclass(frozen=True)
class RasterHeader:
    """What an image file's header says it decodes to, read without decoding a pixel."""

    format: str  # "JPEG" | "PNG" | "BMP" | "TIFF"
    width: int
    height: int


RASTER_FORMATS = "JPEG, PNG, BMP, TIFF"


def raster_header(data: bytes, name: str = "<bytes>") -> RasterHeader:
    """The format and dimensions from a JPEG, PNG, BMP or TIFF header. Any other content is
    refused (OpenCV would decode more formats, but only these have their size checked first)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        kind, parse = "PNG", _png_size
    elif data[:2] == b"\xff\xd8":
        kind, parse = "JPEG", _jpeg_size
    elif data[:2] == b"BM":
        kind, parse = "BMP", _bmp_size
    elif data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        kind, parse = "TIFF", _tiff_size
    else:
        raise InputError(f"{name}: not a readable image (not {RASTER_FORMATS} or DICOM)")
    try:
        size = parse(data)
    except (struct.error, IndexError):
        size = None
    if size is None or size[0] <= 0 or size[1] <= 0:
        raise InputError(f"{name}: not a readable image (corrupt or truncated {kind} header: no valid image size)")
    return RasterHeader(format=kind, width=int(size[0]), height=int(size[1]))


def raster_dimensions(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header of a JPEG, PNG, BMP or TIFF; None if unknown."""
    try:
        header = raster_header(data)
    except InputError:
        return None
    return header.width, header.height


def _png_size(data: bytes) -> tuple[int, int] | None:
    if data[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", data[16:24])


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    index = 2
    while index + 9 < len(data):
        if data[index] != 0xFF:
            index += 1
            continue
        marker = data[index + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            index += 1 if marker == 0xFF else 2
            continue
        length = struct.unpack(">H", data[index + 2:index + 4])[0]
        # SOF0..SOF15 (not DHT, JPG, DAC), and SOF55 of JPEG-LS (which DICOM also encapsulates).
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:
            height, width = struct.unpack(">HH", data[index + 5:index + 9])
            return width, height
        index += 2 + length
    return None


def _bmp_size(data: bytes) -> tuple[int, int] | None:
    header_size = struct.unpack("<I", data[14:18])[0]
    if header_size == 12:  # OS/2 BITMAPCOREHEADER
        return struct.unpack("<HH", data[18:22])
    width, height = struct.unpack("<ii", data[18:26])
    return width, abs(height)  # a negative height only means top-down rows


_TIFF_TYPES = {1: ("B", 1), 3: ("H", 2), 4: ("I", 4), 16: ("Q", 8)}  # BYTE, SHORT, LONG, LONG8


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    """ImageWidth x ImageLength of the first image (the one OpenCV decodes), classic or BigTIFF."""
    order = "<" if data[:2] == b"II" else ">"
    big = struct.unpack(order + "H", data[2:4])[0] == 43
    if big:
        offset = struct.unpack(order + "Q", data[8:16])[0]
        count = struct.unpack(order + "Q", data[offset:offset + 8])[0]
        entry, entry_size, field = offset + 8, 20, 8
    else:
        offset = struct.unpack(order + "I", data[4:8])[0]
        count = struct.unpack(order + "H", data[offset:offset + 2])[0]
        entry, entry_size, field = offset + 2, 12, 4
    values: dict[int, int] = {}
    for _ in range(min(count, 4096)):
        raw = data[entry:entry + entry_size]
        entry += entry_size
        if len(raw) < entry_size:
            return None
        tag, kind = struct.unpack(order + "HH", raw[:4])
        if tag in (256, 257) and kind in _TIFF_TYPES:
            code, size = _TIFF_TYPES[kind]
            values[tag] = struct.unpack(order + code, raw[entry_size - field:entry_size - field + size])[0]
    if 256 not in values or 257 not in values:
        return None
    return values[256], values[257]


# --------------------------------------------------------------------------- DICOM


def decode_dicom_bytes(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    try:
        import pydicom
    except ImportError:  # pragma: no cover - depends on the installed extras
        raise InputError(f"{name}: DICOM support is not installed (pip install 'medge[dicom]')") from None
    import io

    try:
        dataset = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as error:  # pydicom raises many types for corrupt files
        raise InputError(f"{name}: not a readable DICOM file ({type(error).__name__}: {error})") from None
    return decode_dicom_dataset(dataset, name, max_pixels=max_pixels)


SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2", "RGB", "YBR_FULL", "YBR_FULL_422",
                         "YBR_ICT", "YBR_RCT", "PALETTE COLOR")


def decode_dicom_dataset(dataset, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """pydicom Dataset -> display pixels: modality LUT (rescale), VOI window, MONOCHROME1 inverted."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    if "PixelData" not in dataset and "FloatPixelData" not in dataset and "DoubleFloatPixelData" not in dataset:
        raise InputError(f"{name}: DICOM has no pixel data")
    photometric = str(dataset.get("PhotometricInterpretation", "")).strip().upper()
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise InputError(f"{name}: unsupported photometric interpretation {photometric or '(missing)'!r}")
    rows, columns = int(dataset.get("Rows", 0) or 0), int(dataset.get("Columns", 0) or 0)
    frame_count = int(dataset.get("NumberOfFrames", 1) or 1)
    if rows * columns * frame_count > max_pixels:
        raise InputError(f"{name}: DICOM is {columns}x{rows}x{frame_count} pixels, over the limit of {max_pixels}")
    _check_encapsulated_frames(dataset, name, rows, columns, frame_count)
    try:
        array = dataset.pixel_array  # pydicom 3 converts YBR to RGB and applies palettes lazily below
    except Exception as error:
        syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
        detail = f" (transfer syntax {syntax.name})" if syntax is not None else ""
        raise InputError(f"{name}: cannot decode DICOM pixel data{detail}: {_decoder_reason(error)}") from None
    samples = int(dataset.get("SamplesPerPixel", 1) or 1)
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        array = apply_color_lut(array, dataset)
        samples = 3
    frames_array = array if (frame_count > 1) else array[np.newaxis, ...]
    frames = []
    for frame in frames_array:
        if samples == 1:
            values = apply_modality_lut(frame, dataset)
            has_window = "WindowCenter" in dataset and "WindowWidth" in dataset
            has_voi_lut = "VOILUTSequence" in dataset
            if has_window or has_voi_lut:
                values = apply_voi_lut(values, dataset, prefer_lut=has_voi_lut)
            display = window_to_uint8(values, name=name)
            if photometric == "MONOCHROME1":
                display = 255 - display
        else:
            display = to_display_pixels(np.asarray(frame), name)
        frames.append(np.ascontiguousarray(display))
    return DecodedImage(
        frames=frames,
        kind="dicom",
        modality=_text(dataset.get("Modality")),
        body_part=_text(dataset.get("BodyPartExamined")),
        sop_instance_uid=_text(dataset.get("SOPInstanceUID")),
        info={"photometric": photometric, "frames": len(frames), "rows": rows, "columns": columns},
    )


def _check_encapsulated_frames(dataset, name: str, rows: int, columns: int, frame_count: int) -> None:
    """A compressed frame is decoded at the size its own codestream declares, not the DICOM
    header's Rows x Columns: one that disagrees (a bomb inside a small-looking DICOM) is refused
    before any decoder sees it. JPEG, JPEG-LS and JPEG 2000 codestreams are read; RLE has no
    size of its own (its decoder uses Rows and Columns)."""
    syntax = getattr(getattr(dataset, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not getattr(syntax, "is_compressed", False) or "PixelData" not in dataset:
        return
    from pydicom.encaps import generate_frames

    try:
        for index, frame in enumerate(generate_frames(dataset.PixelData, number_of_frames=frame_count)):
            if index >= frame_count:
                break
            size = _codestream_size(frame)
            if size is not None and tuple(size) != (columns, rows):
                raise InputError(f"{name}: compressed frame {index} is {size[0]}x{size[1]} pixels but the DICOM "
                                 f"header says {columns}x{rows} (refused before decoding)")
    except InputError:
        raise
    except Exception:  # malformed encapsulation: the decoder reports it in its own words
        return


def _codestream_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a JPEG / JPEG-LS or JPEG 2000 codestream (raw or in a JP2 file)."""
    try:
        if data[:2] == b"\xff\xd8":
            return _jpeg_size(data)
        if data[:12] == b"\x00\x00\x00\x0cjP  \r\n\x87\n":  # JP2 file: the codestream is in its jp2c box
            start = data.find(b"jp2c")
            data = data[start + 4:] if start >= 0 else b""
        if data[:4] == b"\xff\x4f\xff\x51":  # SOC, then SIZ: Xsiz, Ysiz, XOsiz, YOsiz
            xsiz, ysiz, xosiz, yosiz = struct.unpack(">IIII", data[8:24])
            return xsiz - xosiz, ysiz - yosiz
    except struct.error:
        return None
    return None


def _decoder_reason(error: Exception) -> str:
    """One line from pydicom's decode error: when it lists every plugin's failure under a
    heading ("...raised by all available plugins:"), the plugins' reasons are what the user needs."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    if lines[0].endswith(":") and len(lines) > 1:
        return lines[0] + " " + "; ".join(lines[1:])
    return lines[0]


def _text(value) -> str | None:
    if value is None:
        return None
    text = str(value).strip()
    return text or None


# --------------------------------------------------------------------------- model input


def preprocess(pixels: np.ndarray, spec: PreprocessSpec) -> np.ndarray:
    """Display pixels (uint8, (H, W) or (H, W, 3) RGB) -> float32 (height, width, channels)."""
    image = to_display_pixels(pixels)
    if spec.channels == 1 and image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif spec.channels == 3 and image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.shape[:2] != (spec.height, spec.width):
        image = cv2.resize(image, (spec.width, spec.height), interpolation=INTERPOLATIONS[spec.interpolation])
    if image.ndim == 2:
        image = image[:, :, np.newaxis]
    values = image.astype(np.float32)
    if spec.normalization == "unit":
        values /= 255.0
    elif spec.normalization == "symmetric":
        values = values / 127.5 - 1.0
    elif spec.normalization == "imagenet":
        mean = np.asarray(IMAGENET_MEAN[: spec.channels], dtype=np.float32)
        std = np.asarray(IMAGENET_STD[: spec.channels], dtype=np.float32)
        values = (values / 255.0 - mean) / std
    return np.ascontiguousarray(values, dtype=np.float32)


def load_and_preprocess(source: str | Path | bytes, spec: PreprocessSpec, name: str | None = None,
                        max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A file straight to model input (first frame). Used by predict and by training on image trees."""
    return preprocess(decode_image(source, name=name, max_pixels=max_pixels, spec=spec).pixels, spec)
