"""Experiments over the real round engine: label-efficiency simulation, backbone comparison,
the demo.
"""
