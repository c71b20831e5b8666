"""SASRec's config section (`sasrec` in a bundle's config)."""

from dataclasses import dataclass, field


@dataclass
class SasRecConfig:
    """SASRec (Kang & McAuley, ICDM 2018) trained with full cross-entropy over every item at every
    position of each training sequence (Klenitskiy & Vasilev, RecSys 2023)."""

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256  # the feed-forward width
    dropout: float = 0.2  # on the embeddings and the residual branches
    attn_dropout: float = 0.0  # on the attention weights (costly on CPU: a mask of B x heads x L x L)
    max_len: int = 200  # the latest items of a history the model reads
    init_std: float = 0.02  # spread of the initial embeddings and projections
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # sequences per step
    epochs: int = 200  # at most; early stopping usually ends sooner
    warmup_steps: int = 0
    grad_clip: float = 5.0
    valid_users: int | None = None  # validate after each epoch on this many users (None: all)
    patience: int = 20  # stop after this many epochs without a better validation NDCG@10
    # Training sequences longer than max_len + 1: "latest" trains on the latest max_len + 1 items
    # only (what inference reads); "random" takes a random window per epoch (older items too).
    crop: str = "latest"
    # Batches of sequences of similar length (less padding, faster), the batches in random order;
    # False: a plain shuffle.
    bucket: bool = True


@dataclass
class SasRecSections:
    sasrec: SasRecConfig = field(default_factory=SasRecConfig)
