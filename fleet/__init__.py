"""Fleet rollout, the operator's side: `medge fleet deploy|status|rollback`.

A deployment is a signed command per device on `{prefix}/{site}/{device}/commands/fleet`
(retained, QoS 1); the bundle travels as an uncompressed tar archive over HTTP(S) from the URL
in the command (resumable with Range, checked by sha256). The device side lives in
medge.edge.fleet; the command format and the archive in medge.edge.fleet.commands/.archive,
which both sides import. See docs/fleet.md.
"""
