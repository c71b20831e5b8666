"""Construction and loading of the T5 models (fresh from a small config, or a local checkpoint)."""

from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from .errors import BundleError, ConfigError

# transformers draws a bar for every model it loads or saves: thousands of frames in a service
# or training log for a sub-second step. The project shows its own progress (genrec.progress).
hf_logging.disable_progress_bar()


@dataclass
class ModelConfig:
    """Size of a fresh T5; `pretrained_path` (a local folder) wins over the size fields."""

    d_model: int = 128
    d_ff: int = 512
    num_layers: int = 2
    num_decoder_layers: int = 2
    num_heads: int = 4
    d_kv: int = 32
    dropout_rate: float = 0.1
    pretrained_path: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


def build_t5(config: ModelConfig, tokenizer: PreTrainedTokenizerBase, seed: int | None = None) -> T5ForConditionalGeneration:
    """A T5 whose vocabulary and special tokens match `tokenizer` (the tokenizer both models share)."""
    if config.pretrained_path:
        path = Path(config.pretrained_path)
        if not path.is_dir():
            raise ConfigError(f"pretrained_path {path} is not a folder holding a T5 checkpoint")
        model = T5ForConditionalGeneration.from_pretrained(str(path))
        if model.get_input_embeddings().num_embeddings < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        return model
    if seed is not None:
        torch.manual_seed(seed)
    t5_config = T5Config(
        vocab_size=len(tokenizer),
        d_model=config.d_model,
        d_ff=config.d_ff,
        d_kv=config.d_kv,
        num_layers=config.num_layers,
        num_decoder_layers=config.num_decoder_layers,
        num_heads=config.num_heads,
        dropout_rate=config.dropout_rate,
        feed_forward_proj="relu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    return T5ForConditionalGeneration(t5_config)


def load_t5(path: str | Path) -> T5ForConditionalGeneration:
    path = Path(path)
    try:
        model = T5ForConditionalGeneration.from_pretrained(str(path))
    except Exception as exc:
        raise BundleError(f"cannot load the T5 model in {path}: {exc}") from exc
    model.eval()
    return model
