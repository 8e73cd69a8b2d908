"""The learning core of streamlearn: event schemas and feature specs,
featurization, the PyTorch model and online learner, evaluation metrics,
drift detectors and the validation gate. It needs no Beam.
"""
