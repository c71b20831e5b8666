"""Shared core of the generative recommender: what training and serving must agree on.

Prompt rendering, textual-ID normalisation, the prefix trie, constrained beam search,
diverse ID minting, model construction and the bundle format live here, so that the
offline evaluation runs exactly the code that serves. Nothing here knows HTTP, Redis or
training loops.
"""

__version__ = "0.1.0"
