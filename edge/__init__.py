"""medge.edge: everything the device runs. Never imports TensorFlow.

Training and conversion import from here (preprocessing, bundle format, runtimes) so that
the workstation and the device share one implementation.
"""
