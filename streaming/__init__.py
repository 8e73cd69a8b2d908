"""The streaming side of streamlearn: the Beam pipeline, Pub/Sub encoding, the
publisher, batch prediction, deployment and metrics export.

Importing this package imports neither Beam nor torch; the submodules do.
"""
