"""Monitoring of the edge devices over MQTT: a web dashboard, a terminal monitor and
Home Assistant discovery.

`events` turns one MQTT message into a checked `Event`; `state` folds events into what the
views show (devices, results, errors, alerts from `alerts`); `store` keeps the history in
SQLite; `mqtt` is the subscriber that feeds them; `service` wires these together for the
dashboard and `server` serves its page with server-sent events; `monitor` is the terminal
view; `homeassistant` publishes MQTT discovery configs.
"""
