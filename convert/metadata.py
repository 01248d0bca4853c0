"""The medge.json essentials embedded inside every model file, so a file found on its own still
says what it is: classes, threshold, preprocessing, name, version (TFLite metadata entry /
ONNX metadata_props, both under the key "medge"; `medge.edge.runtime.embedded_metadata`
reads it back without TensorFlow)."""
from __future__ import annotations

import json
from pathlib import Path

from medge.edge.bundle import RUNTIME_FAMILY
from medge.edge.manifest import Manifest
from medge.edge.runtime import METADATA_KEY  # the device reads it back with embedded_metadata()


def model_metadata(manifest: Manifest, format_name: str) -> dict:
    """The subset of the manifest a model file carries about itself."""
    full = manifest.to_dict()
    keys = ("task", "classes", "positive_class", "threshold", "preprocessing", "medge_version", "disclaimer")
    data = {"schema": "medge.model/1", "format": format_name, "model": full["model"]}
    data.update({key: full[key] for key in keys})
    return data


def embed_metadata(path: Path, data: dict) -> None:
    """Embed by runtime family, so a new format of an existing family needs nothing here."""
    EMBEDDERS[RUNTIME_FAMILY[path.suffix.lower()]](path, data)


def embed_tflite_metadata(path: Path, data: dict) -> None:
    from tensorflow.lite.python import schema_py_generated as schema
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(path.read_bytes()))
    buffer = schema.BufferT()
    buffer.data = list(json.dumps(data, sort_keys=True).encode())
    model.buffers.append(buffer)
    entry = schema.MetadataT()
    entry.name = METADATA_KEY
    entry.buffer = len(model.buffers) - 1
    model.metadata = [m for m in (model.metadata or []) if m.name != METADATA_KEY] + [entry]
    path.write_bytes(bytes(flatbuffer_utils.convert_object_to_bytearray(model)))


def embed_onnx_metadata(path: Path, data: dict) -> None:
    import onnx

    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key != METADATA_KEY]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=METADATA_KEY, value=json.dumps(data, sort_keys=True))
    model.producer_name = "medge"
    onnx.save(model, str(path))


EMBEDDERS = {"tflite": embed_tflite_metadata, "onnx": embed_onnx_metadata}
