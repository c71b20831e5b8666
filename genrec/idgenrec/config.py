"""IDGenRec's config sections: the ID generator, the recommender and alternate training.

They are top-level sections of a bundle's config (`generator`, `recommender`, `alternate`),
read back by training and the service through these same dataclasses.
"""

from dataclasses import dataclass, field

from ..modeling import ModelConfig
from .minting import MintConfig


@dataclass
class GeneratorConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    warmup_epochs: int = 20
    lr: float = 3e-3
    batch_size: int = 64
    keyword_count: int = 4
    # Warm-up batches of item texts of similar lengths (training.loop.length_grouped_batches):
    # less padding, other batches than a plain shuffle.
    length_grouped: bool = False
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
    # Batches of prompts of similar lengths (training.loop.length_grouped_batches), in the
    # recommender phases and in alternate training's ID phases: less padding, other batches
    # than a plain shuffle.
    length_grouped: bool = False
    user_ids: bool = False  # textual user IDs fill {user_id} (docs/methods.md, "Textual user IDs"); alternate.user_ids also turns them on


@dataclass
class AlternateConfig:
    """Alternate training (docs/methods.md, "Alternate training"): rounds of ID-generator phase -> re-mint -> recommender phase.

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
class IdGenRecSections:
    generator: GeneratorConfig = field(default_factory=GeneratorConfig)
    recommender: RecommenderConfig = field(default_factory=RecommenderConfig)
    alternate: AlternateConfig = field(default_factory=AlternateConfig)
