"""Monitoring of the edge devices over MQTT: a web dashboard, a terminal monitor and
Home Assistant discovery.

`events` turns one MQTT message into a checked `Event`; `state` folds events into what the
views show (devices, results, errors, alerts from `alerts`); `store` keeps the history in
SQLite; `mqtt` is the subscriber that feeds them; `service` wires these together for the
dashboard and `server` serves its page with server-sent events, behind the Host allow-list
and optional login of `auth`; `monitor` is the terminal view; `homeassistant` publishes MQTT
discovery configs. Topics, message kinds and schemas come from medge.edge.comms.topics and
edge/schemas, the broker settings and MQTT client from the daemon's own code.
"""
