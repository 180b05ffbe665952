"""amf: normal vs atypical mitotic figure classification (MIDOG 2025 Track 2).

Modules, in the order data flows: io (read input, write output) -> preprocess -> ensemble
(built by models from the manifest) -> predict. Training reuses preprocess and models.
"""

__version__ = "0.1.0"
