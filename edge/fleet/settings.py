"""The daemon's `[fleet]` section (edge/config.py declares it with the other sections).

Set `trusted_operator_keys` to take part in fleet rollouts: the daemon then subscribes to its
`commands/fleet` topic and runs edge/fleet/controller.py. Empty (the default): no fleet.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError


@dataclass
class FleetSettings:
    # Ed25519 public keys (PEM) of the fleet operator: only commands signed by one are obeyed.
    trusted_operator_keys: list[Path] = field(default_factory=list)
    # The bundle store and its active.json pointer [default: STATE_DIR/fleet].
    dir: Path | None = None
    # Refuse a bundle that carries no self-test reference set (bundles made before medge wrote one).
    require_self_test: bool = False
    # The largest bundle archive a command may name.
    max_bundle_mb: float = 512.0

    @property
    def enabled(self) -> bool:
        return bool(self.trusted_operator_keys)


def validate_fleet(fleet: FleetSettings) -> None:
    for path in fleet.trusted_operator_keys:
        if not Path(path).is_file():
            raise ConfigError(f"fleet.trusted_operator_keys: {path} does not exist")
    if fleet.max_bundle_mb <= 0:
        raise ConfigError(f"fleet.max_bundle_mb: must be > 0, not {fleet.max_bundle_mb}")
