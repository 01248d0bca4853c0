"""Full-integer models end at the logits; the device applies the sigmoid/softmax in float.

An int8 output holding a probability has a fixed grid of 1/256: every case the model is more
than ~99.6% sure of lands in the same top step, which ties them and costs AUC (on the default
PneumoniaMNIST CNN, 0.005 of AUC from the output grid alone, against 0.0001 for quantizing
the logits). The manifest records the activation (`output.activation`) and
`medge.edge.runtime` applies it after dequantizing, so scores on the device stay ranked.
"""
from __future__ import annotations

ACTIVATIONS = ("sigmoid", "softmax")


def split_output_activation(model):
    """(model ending at the logits, "sigmoid"/"softmax") or (model, None) when the head is not a
    single Dense layer with that activation (e.g. an ensemble averaging its members' probabilities)."""
    import keras

    last = model.layers[-1]
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if not isinstance(last, keras.layers.Dense) or activation not in ACTIVATIONS or len(model.outputs) != 1:
        return model, None
    if model.outputs[0] is not last.output:
        return model, None
    config = last.get_config()
    config.update(activation="linear", name=f"{last.name}_logits")
    head = keras.layers.Dense.from_config(config)
    logits = head(last.input)
    head.set_weights(last.get_weights())
    inputs = model.inputs[0] if len(model.inputs) == 1 else model.inputs  # keep the caller's input structure
    return keras.Model(inputs, logits, name=f"{model.name}_logits"), activation
