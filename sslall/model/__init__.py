"""The model side: backbones, heads, checkpoints, features and their cache, trainers, last
stage, the round's learner, devices, torchrun helpers and inference.
"""
