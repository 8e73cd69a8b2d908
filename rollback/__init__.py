"""The versioned weight registry and the operator's tools (``rollback``,
``streamlearn versions``). Imports neither torch nor Beam, so that the
operator's commands return at once. Weights are bytes here.
"""
