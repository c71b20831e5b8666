"""CLLM4Rec's config section (`cllm4rec` in a bundle's config)."""

from dataclasses import dataclass, field

from ..modeling import ModelConfig


@dataclass
class Cllm4RecConfig:
    """CLLM4Rec (docs/methods.md, "CLLM4Rec"): pretraining on collaborative + content documents, then fine-tuning."""

    model: ModelConfig = field(default_factory=ModelConfig)
    freeze_backbone: bool = False  # True: only the user/item tables learn (the paper freezes GPT-2)
    pretrain_epochs: int = 10
    pretrain_lr: float = 1e-3
    finetune_epochs: int = 20
    finetune_lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 64
    reg_lambda: float = 1.0  # mutual regularization of the two LMs' user/item embeddings
    mask_share: float = 0.2  # share of a history held out as the fine-tuning target
    holdout_share: float = 0.2  # per-user held-out interactions of CLLM4Rec's own protocol
    max_doc_items: int = 64  # items of a collaborative document (a random subset when longer)
    max_text_tokens: int = 64  # tokens of a content document's main text
    max_prompt_items: int = 50  # history items in a recommendation prompt (the latest)
    user_dropout: float = 0.1  # share of fine-tuning prompts without user tokens (unknown users)
    valid_users: int | None = None  # validate after each fine-tuning epoch on this many users
    grad_clip: float = 1.0
    # Fine-tuning batches of prompts of similar lengths (training.loop.length_grouped_batches):
    # less padding, other batches than a plain shuffle.
    length_grouped: bool = False
    # Initial spread of the user/item tables: 0.02 as the reference (whose GPT-2 word embeddings
    # have about that spread); None matches the backbone's own word embeddings (about 1.0 for a
    # freshly initialised T5, whose ID tokens are otherwise drowned in the residual stream).
    init_std: float | None = 0.02
    # Fine-tuning settings measured on ML-100K leave-one-out with cllm4rec-tiny (943 users; valid
    # NDCG@10 on all users / test NDCG@10; popularity 0.0345 / 0.0449). The old settings (1 view,
    # d_model^-0.5 head scale, no bias, 6 epochs) only learned popularity: 0.0346 / 0.0435, with a
    # fine-tuning loss (112.7) no lower than a popularity-only multinomial (111.9).
    # Fresh random masks of each user's items per fine-tuning epoch (one view = ~15 steps of 64):
    # 8 views -> 0.0445 / 0.0454.
    finetune_views_per_user: int = 8
    # Scale of the decoder's hidden state before the tied item head; None: T5's d_model^-0.5, which
    # with N(0, 0.02) item embeddings gives near-zero logits that the few steps cannot grow
    # (6 epochs, 8 views: None -> 0.0445 / 0.0454, 1.0 -> 0.0583 / 0.0478; 12 epochs, 8 views, bias,
    # last_item_share 0.5: None -> 0.0466 / 0.0492, 1.0 -> 0.0621 / 0.0574).
    item_head_scale: float | None = 1.0
    item_bias: bool = True  # a learned per-item bias in the tied item head (popularity lives there)
    # Share of fine-tuning examples whose masked-out items always include the latest item (the
    # rest of the mask stays random; the loss is still on the masked-out items only): the
    # leave-one-out task asks for the next item. 12 epochs, 8 views, scale 1, bias: 0.0 -> 0.0539 /
    # 0.0486; 0.5 -> 0.0621 / 0.0574 (20 epochs, best epoch 11).
    last_item_share: float = 0.5
    # The recommendation task the model learns and is asked (docs/methods.md, "CLLM4Rec"):
    # "masked" is the paper's: the prompt `user_u has interacted with <kept items>, user_u will
    # interact with` and the multinomial likelihood of the masked-out items, a bag of items with
    # no order. "next_item" continues the user's collaborative document in time order: the
    # decoder reads `item_a item_b ...` (the latest max_prompt_items) after the prompt `user_u has
    # interacted with` and the item head scores the next item; fine-tuning is the collaborative
    # documents' own loss (every position's next item), as SASRec trains.
    objective: str = "masked"
    # Order of the items of a collaborative document: "shuffled" (the paper's), or "chronological":
    # a window of max_doc_items consecutive items (random per epoch, `crop`), so pretraining
    # already learns what comes next.
    collab_order: str = "shuffled"
    crop: str = "random"  # chronological documents longer than their window: "random" or "latest"
    patience: int | None = None  # stop fine-tuning after this many epochs without a better validation


@dataclass
class Cllm4RecSections:
    cllm4rec: Cllm4RecConfig = field(default_factory=Cllm4RecConfig)
