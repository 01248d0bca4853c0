"""medge: medical-image classifiers from the workstation to point-of-care devices."""

# Both live with the device's code (edge never imports this package); re-exported for `from medge import ...`.
from medge.edge.about import DISCLAIMER, __version__

__all__ = ["DISCLAIMER", "__version__"]
