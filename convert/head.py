"""Full-integer models end at the logits; the device applies the sigmoid/softmax in float.

An int8 output holding a probability has a fixed grid of 1/256: every case the model is more
than ~99.6% sure of lands in the same top step, which ties them and costs AUC (on the default
PneumoniaMNIST CNN, 0.005 of AUC from the output grid alone, against 0.0001 for quantizing
the logits). The manifest records the activation (`output.activation`) and
`medge.edge.runtime` applies it after dequantizing, so scores on the device stay ranked.
"""
from __future__ import annotations


def split_output_activation(model):
    """(model ending at the logits, "sigmoid"/"softmax") or (model, None) when the head is not a
    single Dense layer with that activation (e.g. an ensemble averaging its members' probabilities).
    One implementation, shared with training's temperature fit, so both see the same logits."""
    from medge.train.calibration import split_logits

    return split_logits(model)
