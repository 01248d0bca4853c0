"""How the device talks to the site: the MQTT contract (`topics`) and the publishing of the
durable outbox (`mqtt`).

`Publisher` and friends load lazily: the contract (`medge.edge.comms.topics`) is imported by
payload builders and the dashboard, which must not drag paho and the outbox in with it.
"""
from importlib import import_module

__all__ = ["Publisher", "probe_broker", "make_client"]


def __getattr__(name: str):
    if name in __all__:
        return getattr(import_module(".mqtt", __name__), name)
    raise AttributeError(name)
