"""Named training presets (`genrec-train run --config NAME`): a method and its settings, each
chosen by measurement on the validation split (docs/results.md has the numbers)."""

import copy

from genrec.cllm4rec.config import Cllm4RecConfig, Cllm4RecSections
from genrec.config import DataConfig, EvalConfig, TokenizerConfig, TrainConfig
from genrec.errors import ConfigError
from genrec.idgenrec.config import GeneratorConfig, IdGenRecSections, RecommenderConfig
from genrec.idgenrec.minting import MintConfig
from genrec.modeling import ModelConfig
from genrec.sasrec.config import SasRecConfig, SasRecSections


def _tiny() -> TrainConfig:
    small = ModelConfig(
        d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, dropout_rate=0.0
    )
    # Settings chosen on validation NDCG@10 over all 943 users (docs/results.md, "The quick-start
    # model"): one torch thread (a model this small runs several times faster on one thread
    # than on two), the latest 5 history items in a prompt (3x the examples/s of 20 items), so
    # 30 prefixes per user fit in 6 epochs.
    return TrainConfig(
        name="tiny",
        threads=1,
        data=DataConfig(kcore=0, max_history=5),
        tokenizer=TokenizerConfig(vocab_size=5000),
        eval=EvalConfig(batch_size=64),
        method=IdGenRecSections(
            generator=GeneratorConfig(
                model=copy.deepcopy(small), warmup_epochs=12, lr=5e-3, mint=MintConfig(batch_size=256)
            ),
            recommender=RecommenderConfig(
                model=copy.deepcopy(small),
                epochs=6,
                lr=1e-2,
                batch_size=64,
                warmup_steps=50,
                # One template: at this size the model learns several times faster (measured:
                # valid NDCG@10 0.047 with 1 template vs 0.015-0.024 with 5 or 10 after 4 epochs).
                num_train_templates=1,
                max_prefixes_per_user=30,
                valid_users=None,
            ),
        ),
    )


def _ml100k() -> TrainConfig:
    base = ModelConfig(
        d_model=128, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32, dropout_rate=0.0
    )
    # The latest 5 history items in a prompt, every prefix of every user, one torch thread: valid
    # NDCG@10 0.0798 against 0.0702 with 20 items and 50 prefixes for 6 epochs, in 41 minutes
    # instead of 84 (docs/results.md, "IDGenRec ml100k with 5 history items"); 16 epochs instead
    # of 8: valid 0.0893, test 0.0668 against 0.0589 (115 min beside other trainings).
    return TrainConfig(
        name="ml100k",
        threads=1,
        data=DataConfig(kcore=0, max_history=5),
        tokenizer=TokenizerConfig(vocab_size=5000),
        eval=EvalConfig(batch_size=64),
        method=IdGenRecSections(
            generator=GeneratorConfig(
                model=copy.deepcopy(base), warmup_epochs=30, lr=3e-3, mint=MintConfig(batch_size=256)
            ),
            recommender=RecommenderConfig(
                model=copy.deepcopy(base),
                epochs=16,
                lr=5e-3,
                batch_size=64,
                warmup_steps=200,
                num_train_templates=5,
                test_template_share=0.5,
                max_prefixes_per_user=None,
                valid_users=None,
            ),
        ),
    )


def _cllm4rec_tiny() -> TrainConfig:
    small = ModelConfig(
        d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, dropout_rate=0.0
    )
    return TrainConfig(
        name="cllm4rec-tiny",
        kind="cllm4rec",
        data=DataConfig(kcore=0, max_text_chars=256),
        tokenizer=TokenizerConfig(vocab_size=5000),
        method=Cllm4RecSections(
            cllm4rec=Cllm4RecConfig(
                model=small,
                pretrain_epochs=2,
                pretrain_lr=3e-3,
                finetune_epochs=12,
                finetune_lr=3e-3,
                batch_size=64,
                max_doc_items=32,
                max_text_tokens=32,
                max_prompt_items=30,
                valid_users=300,
                finetune_views_per_user=8,
                item_head_scale=1.0,
                item_bias=True,
                last_item_share=0.5,
            )
        ),
        eval=EvalConfig(batch_size=128),
    )


def _cllm4rec_ml100k() -> TrainConfig:
    # The next-item objective (docs/methods.md, "CLLM4Rec"): collaborative documents in time order,
    # fine-tuned on every position's next item, recommendation by continuing the user's document;
    # every training item trained on (no hold-out for CLLM4Rec's own protocol), dropout 0.2,
    # validation on every user, early stopping. Measured (docs/results.md, "CLLM4Rec with the
    # next-item objective"): test NDCG@10 0.1067 against 0.0552 for the paper's masked objective
    # with cllm4rec-tiny's recipe, and 0.0936 for sasrec-ml100k.
    config = _cllm4rec_tiny()
    config.name = "cllm4rec-ml100k"
    config.threads = 1
    cfg = config.cllm4rec
    cfg.model.dropout_rate = 0.2
    cfg.objective, cfg.collab_order, cfg.crop = "next_item", "chronological", "random"
    cfg.holdout_share = 0.0
    cfg.max_doc_items = cfg.max_prompt_items = 50
    cfg.pretrain_epochs = 4
    cfg.finetune_views_per_user = 1
    cfg.finetune_epochs, cfg.patience = 150, 20
    cfg.valid_users = None
    return config


def _sasrec_tiny() -> TrainConfig:
    # A one-block SASRec for quick end-to-end runs (about 20 s): validation on 300 users. Its
    # short training favours the latest window (valid NDCG@10 on all users, 10 epochs: latest
    # 0.0959, random 0.0855); 20 epochs -> 0.1001.
    return TrainConfig(
        name="sasrec-tiny",
        kind="sasrec",
        data=DataConfig(kcore=0),
        tokenizer=TokenizerConfig(vocab_size=5000),
        eval=EvalConfig(batch_size=256),
        method=SasRecSections(
            sasrec=SasRecConfig(hidden_size=32, num_layers=1, num_heads=1, inner_size=64, dropout=0.2, max_len=50,
                                lr=3e-3, batch_size=64, epochs=20, patience=5, crop="latest", valid_users=300)
        ),
    )


def _sasrec_ml100k() -> TrainConfig:
    # Tuned on ML-100K by validation NDCG@10 (the measurements: SasRecConfig's docstring).
    return TrainConfig(
        name="sasrec-ml100k",
        kind="sasrec",
        data=DataConfig(kcore=0),
        tokenizer=TokenizerConfig(vocab_size=5000),
        eval=EvalConfig(batch_size=256),
        method=SasRecSections(
            sasrec=SasRecConfig(hidden_size=64, num_layers=2, num_heads=2, inner_size=256, dropout=0.2,
                                attn_dropout=0.0, max_len=50, lr=1e-3, batch_size=128, epochs=200, patience=20,
                                crop="random", valid_users=None)
        ),
    )


PRESETS = {
    "tiny": _tiny,
    "ml100k": _ml100k,
    "cllm4rec-tiny": _cllm4rec_tiny,
    "cllm4rec-ml100k": _cllm4rec_ml100k,
    "sasrec-tiny": _sasrec_tiny,
    "sasrec-ml100k": _sasrec_ml100k,
}


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown config {name!r}; known: {', '.join(sorted(PRESETS))}") from None

