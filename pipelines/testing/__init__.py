"""Helpers for tests, benchmarks and the demo: synthetic clips with a known background, and tiny
randomly initialised models with the real architectures and key names (no weights are downloaded).

- :mod:`.synthetic`: clips with a moving object over a panning scene, PSNR inside the hole.
- :mod:`.lama`: a random LaMa with calibrated BatchNorm statistics.
- :mod:`.svd`: random SVD components of any size saved as a diffusers folder, reverse-motion stand-ins.
"""
