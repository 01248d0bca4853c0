"""Results back into the PACS: for every DICOM input, a Comprehensive SR (TID 1500) and a
Secondary Capture with the result burned in, in the source study, delivered durably to a PACS
by C-STORE and/or DICOMweb STOW-RS.

Modules, one job each: `uids` (deterministic UIDs), `sr` and `secondary_capture` (the writers,
pure pydicom/highdicom/OpenCV), `objects` (both writers for one input), `queue` (the durable
SQLite delivery queue), `senders` (C-STORE and STOW-RS, a registry), `delivery` (the daemon's
hook and the delivery thread). These objects carry patient identity by necessity: they never
go on MQTT and never into logs.
"""
