"""What the device itself must know about medge: its version and the disclaimer it publishes.

The root `medge` package (cli/) re-exports both, so edge depends on nothing above it.
"""

__version__ = "0.1.0"

DISCLAIMER = "Decision support only - not for diagnostic use."
