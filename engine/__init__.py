"""fmfair engine: cohort building, image cache, training stages and the torch-free metrics package.

Importing ``engine`` (or ``engine.data`` / ``engine.metrics``) never imports torch or timm; only the
training stages do, lazily.
"""
