"""Typed training configuration, the named presets and command-line overrides."""

import copy
import json
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass

from genrec.errors import ConfigError
from genrec.minting import MintConfig
from genrec.modeling import ModelConfig


@dataclass
class DataConfig:
    dataset: str = "ml-100k"
    data_dir: str | None = None
    kcore: int = 5
    max_history: int = 20
    max_text_chars: int = 512


@dataclass
class TokenizerConfig:
    vocab_size: int = 4000
    pretrained_path: str | None = None  # a local folder with a pretrained T5 tokenizer


@dataclass
class GeneratorConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup_epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    keyword_count: int = 4
    mint: MintConfig = field(default_factory=MintConfig)


@dataclass
class RecommenderConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    epochs: int = 10
    lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_steps: int = 100
    batch_size: int = 64
    num_train_templates: int = 10  # the first n of genrec.prompts.TRAIN_TEMPLATES
    # Share of examples rendered with the test template (TRAIN_TEMPLATES[0]); None samples all
    # n templates uniformly, as the reference does. Small models learn faster with a larger share.
    test_template_share: float | None = None
    max_source_length: int = 512
    max_prefixes_per_user: int | None = None  # keep only each user's latest prefixes (speed)
    valid_users: int | None = None  # validate after each epoch on this many users (None: all)
    grad_clip: float = 1.0
    user_ids: bool = False  # textual user IDs fill {user_id} (SPEC 1.5); alternate.user_ids also turns them on


@dataclass
class AlternateConfig:
    """Alternate training (SPEC 1.4): rounds of ID-generator phase -> re-mint -> recommender phase.

    rounds=0 is the plain pipeline (keyword-warmed IDs minted once, no ID learning). The total
    number of recommender epochs is `recommender.epochs` split over the recommender phases,
    unless `rec_epochs_per_round` sets each phase's epochs (see training.alternate.phase_schedule).
    """

    rounds: int = 0
    id_phase_first: bool = True  # False: recommender, ID phase per round, plus a final recommender phase
    id_epochs: int = 1
    id_lr: float = 1e-4
    id_batch_size: int = 32
    rec_epochs_per_round: int | None = None  # None: split recommender.epochs over the phases
    soft_id_temperature: float = 1.0
    id_phase_max_pairs: int | None = None  # train the ID phase on a sample of the pairs (speed)
    user_ids: bool = False
    user_id_max_words: int = 4


@dataclass
class EvalConfig:
    num_beams: int = 20  # beam >= k; 20 finds better-scoring IDs than 10 for a few ms more per user
    batch_size: int = 32
    users: int | None = None  # evaluate on the first n users (None: all)


@dataclass
class Cllm4RecConfig:
    """CLLM4Rec (SPEC 2): pretraining on collaborative + content documents, then fine-tuning."""

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


@dataclass
class TrainConfig:
    name: str = "custom"
    kind: str = "idgenrec"  # "idgenrec" or "cllm4rec": which method `genrec-train run` trains
    seed: int = 42
    threads: int | None = None
    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    alternate: AlternateConfig = field(default_factory=AlternateConfig)
    cllm4rec: Cllm4RecConfig = field(default_factory=Cllm4RecConfig)

    def to_dict(self) -> dict:
        return asdict(self)


def _tiny() -> TrainConfig:
    small = ModelConfig(d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, dropout_rate=0.0)
    return TrainConfig(
        name="tiny",
        data=DataConfig(kcore=0),
        tokenizer=TokenizerConfig(vocab_size=5000),
        generator=GeneratorConfig(model=copy.deepcopy(small), warmup_epochs=12, lr=5e-3, mint=MintConfig(batch_size=256)),
        recommender=RecommenderConfig(
            model=copy.deepcopy(small),
            epochs=8,
            lr=1e-2,
            batch_size=64,
            warmup_steps=50,
            # One template: at this size the model learns several times faster (measured:
            # valid NDCG@10 0.047 with 1 template vs 0.015-0.024 with 5 or 10 after 4 epochs).
            num_train_templates=1,
            max_prefixes_per_user=10,
            valid_users=500,
        ),
        eval=EvalConfig(batch_size=64),
    )


def _ml100k() -> TrainConfig:
    base = ModelConfig(d_model=128, d_ff=512, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=32, dropout_rate=0.0)
    return TrainConfig(
        name="ml100k",
        data=DataConfig(kcore=0),
        tokenizer=TokenizerConfig(vocab_size=5000),
        generator=GeneratorConfig(model=copy.deepcopy(base), warmup_epochs=30, lr=3e-3, mint=MintConfig(batch_size=256)),
        recommender=RecommenderConfig(
            model=copy.deepcopy(base),
            epochs=6,
            lr=5e-3,
            batch_size=64,
            warmup_steps=200,
            num_train_templates=5,
            test_template_share=0.5,
            max_prefixes_per_user=50,
            valid_users=None,
        ),
        eval=EvalConfig(batch_size=64),
    )


def _cllm4rec_tiny() -> TrainConfig:
    small = ModelConfig(d_model=64, d_ff=256, num_layers=2, num_decoder_layers=2, num_heads=4, d_kv=16, dropout_rate=0.0)
    return TrainConfig(
        name="cllm4rec-tiny",
        kind="cllm4rec",
        data=DataConfig(kcore=0, max_text_chars=256),
        tokenizer=TokenizerConfig(vocab_size=5000),
        cllm4rec=Cllm4RecConfig(
            model=small, pretrain_epochs=2, pretrain_lr=3e-3, finetune_epochs=12, finetune_lr=3e-3,
            batch_size=64, max_doc_items=32, max_text_tokens=32, max_prompt_items=30, valid_users=300,
            finetune_views_per_user=8, item_head_scale=1.0, item_bias=True, last_item_share=0.5,
        ),
        eval=EvalConfig(batch_size=128),
    )


def _cllm4rec_ml100k() -> TrainConfig:
    # cllm4rec-tiny's recipe (d_model 64, no dropout, lr 3e-3), measured to beat popularity, with
    # more epochs (the best validation epoch is kept) and validation on every user. A larger
    # model did worse here: d_model 128, dropout 0.1, lr 2e-3 left the fine-tuning loss flat
    # from epoch 3 and validation NDCG@10 at 0.045-0.055 over 14 epochs (tiny: 0.062).
    config = _cllm4rec_tiny()
    config.name = "cllm4rec-ml100k"
    config.cllm4rec.pretrain_epochs = 4
    config.cllm4rec.finetune_epochs = 24
    config.cllm4rec.valid_users = None
    return config


PRESETS = {"tiny": _tiny, "ml100k": _ml100k, "cllm4rec-tiny": _cllm4rec_tiny, "cllm4rec-ml100k": _cllm4rec_ml100k}


def preset(name: str) -> TrainConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown config {name!r}; known: {', '.join(sorted(PRESETS))}") from None


def apply_override(config, assignment: str) -> None:
    """`section.sub.key=value` with a JSON value (plain strings need no quotes)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key=value")
    path, raw = assignment.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    target = config
    parts = path.strip().split(".")
    for part in parts[:-1]:
        if not is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"unknown config section {part!r} in {path!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not is_dataclass(target) or name not in {f.name for f in fields(target)}:
        raise ConfigError(f"unknown config key {path!r}")
    current = getattr(target, name)
    if is_dataclass(current):
        raise ConfigError(f"{path!r} is a section; set one of its keys")
    if isinstance(current, str) and value is not None and not isinstance(value, str):
        value = raw.strip()  # a string field takes the text as written (e.g. a folder named 5)
    if isinstance(current, bool) and not isinstance(value, bool):
        raise ConfigError(f"{path!r} takes true or false, not {raw!r}")
    if isinstance(current, int) and not isinstance(current, bool) and isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if current is not None and value is not None and type(current) is not type(value):
        raise ConfigError(f"{path!r} takes a {type(current).__name__}, not {raw!r}")
    if current is None and value is not None:
        value = _typed_for_optional(type(target), name, value, raw, path)
    setattr(target, name, value)


def _typed_for_optional(cls, name: str, value, raw: str, path: str):
    """A value for a field whose current value is None: checked against the field's annotation
    (e.g. `int | None`), since there is no current value to take the type from."""
    expected = [t for t in typing.get_args(typing.get_type_hints(cls)[name]) if t is not type(None)]
    if not expected:
        return value
    if str in expected and not isinstance(value, str):
        return raw.strip()  # e.g. a folder named 5
    if float in expected and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if int in expected and isinstance(value, float) and value.is_integer():
        value = int(value)
    if type(value) not in expected:
        names = " or ".join(t.__name__ for t in expected)
        raise ConfigError(f"{path!r} takes a {names} or null, not {raw!r}")
    return value


def config_from_dict(data: dict) -> TrainConfig:
    """Rebuilds a config recorded in a bundle manifest."""
    return _build(TrainConfig, data)


def _build(cls, data: dict):
    default = cls()
    kwargs = {}
    for f in fields(cls):
        if f.name in data:
            value = data[f.name]
            current = getattr(default, f.name)
            if is_dataclass(current) and isinstance(value, dict):
                value = _build(type(current), value)
            kwargs[f.name] = value
    return cls(**kwargs)
