"""SASRec's config section (`sasrec` in a bundle's config)."""

from dataclasses import dataclass, field


@dataclass
class SasRecConfig:
    """SASRec (Kang & McAuley, ICDM 2018) trained with full cross-entropy over every item at every
    position of each training sequence (Klenitskiy & Vasilev, RecSys 2023).

    The defaults are sasrec-ml100k's, chosen on ML-100K leave-one-out by validation NDCG@10 (all
    943 users, full ranking, the history excluded; popularity 0.0345). One seed moves it by up to
    0.01, so the close calls were run with three seeds (42, 1, 2; mean given). max_len: 50 ->
    0.1082 (latest window, batch 128), 100 -> 0.1025, 200 -> 0.0994, 30 -> 0.106 (two seeds).
    crop random -> 0.1145 (three seeds). Batch 64 -> 0.1105 (latest), 0.1115 (random). Dropout
    0.1 / 0.3 / 0.5 -> 0.1042 / 0.1083 / 0.1032 (0.2: 0.1139, same seed); lr 3e-3 -> 0.1046;
    hidden 128 -> 0.1049; attention dropout 0.2 -> 0.1131; weight decay 0.1 -> 0.1134.
    """

    hidden_size: int = 64
    num_layers: int = 2
    num_heads: int = 2
    inner_size: int = 256  # the feed-forward width
    dropout: float = 0.2  # on the embeddings and the residual branches
    attn_dropout: float = 0.0  # on the attention weights (costly on CPU: a mask of B x heads x L x L)
    max_len: int = 50  # the latest items of a history the model reads
    init_std: float = 0.02  # spread of the initial embeddings and projections
    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 128  # sequences per step
    epochs: int = 200  # at most; early stopping ends sooner (best epochs 40-90 on ML-100K)
    warmup_steps: int = 0
    grad_clip: float = 5.0
    valid_users: int | None = None  # validate after each epoch on this many users (None: all)
    patience: int = 20  # stop after this many epochs without a better validation NDCG@10
    # Training sequences longer than max_len + 1: "random" takes a random window of them per epoch
    # (older items are trained on too); "latest" the latest max_len + 1 items only (what
    # inference reads).
    crop: str = "random"
    # Batches of sequences of similar length (training.loop.length_grouped_batches; less padding:
    # faster when max_len is far above the typical length), the batches in random order; False:
    # a plain shuffle.
    length_grouped: bool = False


@dataclass
class SasRecSections:
    sasrec: SasRecConfig = field(default_factory=SasRecConfig)
