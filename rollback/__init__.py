"""The versioned weight registry and the operator's tools (``rollback``,
``streamlearn versions``). Imports neither torch nor Beam, so that the
operator's commands answer at once; weights are bytes here.
"""
