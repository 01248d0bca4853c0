"""medge.convert: a training run -> int8 TFLite / ONNX files -> accuracy gate on the device runtime
-> a verifiable model bundle (`medge convert`, `medge keys`). Workstation side: imports TensorFlow.

Entry point for code: `medge.convert.pipeline.convert(ConvertConfig(...))`. The device side of the
bundle (loading, verifying, running) lives in `medge.edge.bundle` / `runtime` / `classify`.
"""
