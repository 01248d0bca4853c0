"""Fleet model rollout on the device: signed commands, bundle download and store, self-test,
shadow runs and the controller that switches the worker's model (docs/fleet.md).

`commands` is the wire contract shared with the operator side (`medge fleet ...`).
"""
