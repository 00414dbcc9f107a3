"""Image data: safe decoding, preprocessing, torch datasets and transforms, synthetic cells.
"""
