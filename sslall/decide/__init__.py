"""Decisions over arrays: pseudo-label policies, acquisition, routing, the faiss index and
metrics/calibration. numpy, scikit-learn and faiss; no torch.
"""
