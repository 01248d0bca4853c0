"""medge: medical-image classifiers from the workstation to point-of-care devices."""

__version__ = "0.1.0"

DISCLAIMER = "Decision support only - not for diagnostic use."
