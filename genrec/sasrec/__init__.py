"""SASRec: a causal self-attention next-item model over its own item-embedding table (docs/methods.md, "SASRec")."""
