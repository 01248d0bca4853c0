"""How the device talks to the site: MQTT publishing of the durable outbox."""
from .mqtt import Publisher, probe_broker

__all__ = ["Publisher", "probe_broker"]
