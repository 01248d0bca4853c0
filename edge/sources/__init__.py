"""Input sources of the edge daemon: one module each, all behind `base.Source`."""
