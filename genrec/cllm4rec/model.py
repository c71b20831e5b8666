"""CLLM4Rec (docs/methods.md, "CLLM4Rec"): a T5 whose vocabulary is extended with one atomic token per user and per
item, used as two LMs (collaborative and content) that share the backbone weights.

Architecture (the simplest faithful mapping of the GPT-2 original onto the project's T5):

* The **prompt** of a document (soft ID tokens + hard words, e.g. ``user_17 has interacted with``)
  goes to the T5 **encoder**; the **main text** is produced by the T5 **decoder** with teacher
  forcing. The loss is therefore on the main text only: prompt positions are never predicted.
* Token ids: ``[0, V)`` are the tokenizer's words (the backbone's shared embedding), then one id
  per user (``user_<id>``) and one per item (``item_<id>``), added to the tokenizer as atomic
  tokens. Each LM ("collab", "content") owns a user table and an item table (init N(0, 0.02));
  the embedding of a sequence is the concatenation vocabulary | users | items of the LM's tables.
* Collaborative documents: main text = item tokens; the output layer is tied to the collaborative
  item table (softmax over the items only). Content documents: main text = words; softmax over
  the vocabulary through T5's own (tied) LM head.
* Recommendation: the prompt ``user_u has interacted with item_a item_b , user_u will interact
  with`` goes to the encoder, the decoder runs one step from its start token, and its hidden state
  goes through the item head (tied to the collaborative item table): one forward pass scores every
  item for a whole batch of users.

This module depends on torch and transformers only (never on training/ or service/).
"""

from __future__ import annotations

import contextlib
import json
import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from tokenizers import AddedToken
from torch import nn
from transformers import PreTrainedTokenizerBase, T5ForConditionalGeneration

from ..device import model_device, to_device
from ..errors import BundleError
from ..item_table import mask_rows, top_items
from ..method import Recommendation
from ..tensors import IGNORE_INDEX, pad_batch
from ..tokenization import encode_text

LMS = ("collab", "content")
USER_PREFIX = "user_"
ITEM_PREFIX = "item_"
COLLAB_PROMPT = "has interacted with"
CONTENT_PROMPT = "is described as:"
RECOMMEND_PROMPT = "will interact with"
PROMPT_TEXTS = (COLLAB_PROMPT, CONTENT_PROMPT, RECOMMEND_PROMPT, ",")
MODEL_DIR = "cllm4rec"  # the bundle folder of the model
OBJECTIVES = ("masked", "next_item")  # Cllm4RecConfig.objective
COLLAB_ORDERS = ("shuffled", "chronological")  # Cllm4RecConfig.collab_order


def user_token(user_id: str) -> str:
    return f"{USER_PREFIX}{user_id}"


def item_token(item_id: str) -> str:
    return f"{ITEM_PREFIX}{item_id}"


def extend_tokenizer(tokenizer: PreTrainedTokenizerBase, user_ids: Sequence[str], item_ids: Sequence[str]) -> int:
    """Adds `user_<id>` and `item_<id>` as atomic tokens (users first, then items, in order).

    Returns V, the size of the word vocabulary before the extension: user j gets id V + j and
    item i id V + len(users) + i. Raises when the tokenizer already held one of them.
    """
    base = len(tokenizer)
    names = [user_token(u) for u in user_ids] + [item_token(i) for i in item_ids]
    if len(set(names)) != len(names):
        raise ValueError("user or item ids repeat")
    added = tokenizer.add_tokens([AddedToken(n, normalized=False, single_word=False, lstrip=False, rstrip=False)
                                  for n in names])
    if added != len(names):
        raise ValueError(f"the tokenizer already holds {len(names) - added} of the user/item tokens")
    ids = tokenizer.convert_tokens_to_ids(names)
    if ids != list(range(base, base + len(names))):
        raise ValueError("the added user/item tokens did not get consecutive ids")
    return base


# --------------------------------------------------------------------------- the model


class Cllm4RecModel(nn.Module):
    """A T5 backbone plus a user and an item embedding table for each of the two LMs."""

    def __init__(self, backbone: T5ForConditionalGeneration, vocab_size: int, user_ids: Sequence[str],
                 item_ids: Sequence[str], init_std: float | None = 0.02, *, item_bias: bool = False,
                 item_head_scale: float | None = None):
        super().__init__()
        if backbone.get_input_embeddings().num_embeddings < vocab_size:
            raise ValueError("the backbone's vocabulary is smaller than the tokenizer's words")
        self.backbone = backbone
        self.vocab_size = int(vocab_size)
        self.user_ids = [str(u) for u in user_ids]
        self.item_ids = [str(i) for i in item_ids]
        self.user_index = {u: j for j, u in enumerate(self.user_ids)}
        self.item_index = {i: j for j, i in enumerate(self.item_ids)}
        d = backbone.config.d_model
        self.tables = nn.ModuleDict({
            lm: nn.ModuleDict({
                "user": nn.Embedding(len(self.user_ids), d),
                "item": nn.Embedding(len(self.item_ids), d),
            })
            for lm in LMS
        })
        if init_std is None:  # the spread of the backbone's own word embeddings
            init_std = float(backbone.get_input_embeddings().weight.detach().float().std())
        for table in self.embedding_tables():
            nn.init.normal_(table.weight, mean=0.0, std=init_std)
        # The item head: logits = scale * h . e_item (+ b_item). The scale defaults to T5's own
        # d_model^-0.5 (what its tied LM head applies); the optional per-item bias (zeros at first)
        # lets popularity live outside the tied embeddings.
        self.item_head_scale = float(item_head_scale) if item_head_scale is not None else float(d) ** -0.5
        self.item_bias = nn.Parameter(torch.zeros(len(self.item_ids))) if item_bias else None

    # ---------------------------------------------------------------- ids

    @property
    def num_users(self) -> int:
        return len(self.user_ids)

    @property
    def num_items(self) -> int:
        return len(self.item_ids)

    @property
    def user_offset(self) -> int:
        return self.vocab_size

    @property
    def item_offset(self) -> int:
        return self.vocab_size + self.num_users

    def user_token_id(self, user_id: str) -> int | None:
        j = self.user_index.get(str(user_id))
        return None if j is None else self.user_offset + j

    def item_token_id(self, item_id: str) -> int | None:
        j = self.item_index.get(str(item_id))
        return None if j is None else self.item_offset + j

    def embedding_tables(self) -> list[nn.Embedding]:
        return [self.tables[lm][kind] for lm in LMS for kind in ("user", "item")]

    def set_backbone_trainable(self, trainable: bool) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(trainable)

    # ---------------------------------------------------------------- forward

    def embed(self, ids: torch.Tensor, lm: str) -> torch.Tensor:
        """Input embeddings of a batch of extended token ids, from `lm`'s tables."""
        shared = self.backbone.get_input_embeddings()
        users, items = self.tables[lm]["user"], self.tables[lm]["item"]
        is_user = (ids >= self.user_offset) & (ids < self.item_offset)
        is_item = ids >= self.item_offset
        words = shared(ids.clamp(max=self.vocab_size - 1))
        user_rows = users((ids - self.user_offset).clamp(0, self.num_users - 1))
        item_rows = items((ids - self.item_offset).clamp(0, self.num_items - 1))
        out = torch.where(is_user.unsqueeze(-1), user_rows, words)
        return torch.where(is_item.unsqueeze(-1), item_rows, out)

    def decode_hidden(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_ids: torch.Tensor,
                      dec_mask: torch.Tensor, lm: str) -> torch.Tensor:
        """Decoder hidden states (the decoder's final layer norm, before any head's scaling)."""
        encoded = self.backbone.encoder(inputs_embeds=self.embed(enc_ids, lm), attention_mask=enc_mask).last_hidden_state
        return self.backbone.decoder(
            inputs_embeds=self.embed(dec_ids, lm), attention_mask=dec_mask,
            encoder_hidden_states=encoded, encoder_attention_mask=enc_mask,
        ).last_hidden_state

    def item_logits(self, hidden: torch.Tensor, lm: str = "collab") -> torch.Tensor:
        """The item prediction head, tied to `lm`'s item table: logits over the items only (plus
        the item bias, when the model has one, for the collaborative LM)."""
        logits = (hidden * self.item_head_scale) @ self.tables[lm]["item"].weight.t()
        if self.item_bias is not None and lm == "collab":
            logits = logits + self.item_bias
        return logits

    def vocab_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        if getattr(self.backbone.config, "tie_word_embeddings", True):  # as T5 scales before its tied head
            hidden = hidden * (self.backbone.config.d_model ** -0.5)
        return self.backbone.lm_head(hidden)[..., : self.vocab_size]

    def score_next(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor, dec_ids: torch.Tensor,
                   dec_mask: torch.Tensor) -> torch.Tensor:
        """Log-softmax over all items of what follows each (right-padded) collaborative document:
        the decoder's hidden state at each row's last real position goes through the item head."""
        hidden = self.decode_hidden(enc_ids, enc_mask, dec_ids, dec_mask, "collab")
        last = (dec_mask.sum(1) - 1).clamp(min=0)
        hidden = hidden[torch.arange(hidden.size(0), device=hidden.device), last]
        return F.log_softmax(self.item_logits(hidden, "collab"), dim=-1)

    def score_items(self, enc_ids: torch.Tensor, enc_mask: torch.Tensor) -> torch.Tensor:
        """Log-softmax over all items for each prompt (one decoder step from the start token)."""
        start = torch.full((enc_ids.size(0), 1), self.decoder_start_id, dtype=torch.long, device=enc_ids.device)
        hidden = self.decode_hidden(enc_ids, enc_mask, start, torch.ones_like(start), "collab")[:, 0]
        return F.log_softmax(self.item_logits(hidden, "collab"), dim=-1)

    @property
    def decoder_start_id(self) -> int:
        start = self.backbone.config.decoder_start_token_id
        return int(start if start is not None else self.backbone.config.pad_token_id or 0)

    # ---------------------------------------------------------------- persistence

    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(str(folder / "backbone"), safe_serialization=True)
        tensors = {f"{lm}.{kind}": self.tables[lm][kind].weight.detach().contiguous().cpu()
                   for lm in LMS for kind in ("user", "item")}
        if self.item_bias is not None:
            tensors["collab.item_bias"] = self.item_bias.detach().contiguous().cpu()
        save_file(tensors, str(folder / "embeddings.safetensors"))
        meta = {"vocab_size": self.vocab_size, "user_ids": self.user_ids, "item_ids": self.item_ids,
                "item_head_scale": self.item_head_scale, "item_bias": self.item_bias is not None}
        (folder / "meta.json").write_text(json.dumps(meta), encoding="utf-8")


def load_cllm4rec(folder: Path) -> Cllm4RecModel:
    """The model saved by `Cllm4RecModel.save` (eval mode)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        backbone = T5ForConditionalGeneration.from_pretrained(str(folder / "backbone"))
        tensors = load_file(str(folder / "embeddings.safetensors"))
    except Exception as exc:
        raise BundleError(f"cannot load the CLLM4Rec model in {folder}: {exc}") from exc
    # Models saved before the item bias / head scale existed: no bias, T5's d_model^-0.5.
    model = Cllm4RecModel(backbone, meta["vocab_size"], meta["user_ids"], meta["item_ids"],
                          item_bias=bool(meta.get("item_bias", False)), item_head_scale=meta.get("item_head_scale"))
    for lm in LMS:
        for kind in ("user", "item"):
            weight = tensors.get(f"{lm}.{kind}")
            if weight is None or weight.shape != model.tables[lm][kind].weight.shape:
                raise BundleError(f"{folder}: embeddings of {lm}.{kind} are missing or of the wrong shape")
            model.tables[lm][kind].weight.data.copy_(weight)
    if model.item_bias is not None:
        bias = tensors.get("collab.item_bias")
        if bias is None or bias.shape != model.item_bias.shape:
            raise BundleError(f"{folder}: the item bias is missing or of the wrong shape")
        model.item_bias.data.copy_(bias)
    model.eval()
    return model


# --------------------------------------------------------------------------- documents and batches


@dataclass
class PromptPieces:
    """Token ids of the hard prompt words (encoded once)."""

    collab: list[int]
    content: list[int]
    recommend: list[int]
    comma: list[int]
    eos: int
    pad: int

    @classmethod
    def from_tokenizer(cls, tokenizer: PreTrainedTokenizerBase) -> PromptPieces:
        return cls(
            collab=encode_text(tokenizer, COLLAB_PROMPT),
            content=encode_text(tokenizer, CONTENT_PROMPT),
            recommend=encode_text(tokenizer, RECOMMEND_PROMPT),
            comma=encode_text(tokenizer, ","),
            eos=int(tokenizer.eos_token_id),
            pad=int(tokenizer.pad_token_id),
        )


@dataclass
class DocBatch:
    """Encoder prompt, decoder input (start token + main text shifted right) and labels.

    labels hold item indices (collaborative) or word ids (content), IGNORE_INDEX on padding; the
    prompt never appears in them, so the loss is on the main text only.
    """

    enc_ids: torch.Tensor
    enc_mask: torch.Tensor
    dec_ids: torch.Tensor
    dec_mask: torch.Tensor
    labels: torch.Tensor
    users: torch.Tensor  # user indices whose tokens the documents hold (regularization)
    items: torch.Tensor  # item indices likewise


def _doc_batch(model: Cllm4RecModel, prompts, main_dec, labels, users, items, pad) -> DocBatch:
    """The batch, built on the host and moved to the model's device (one copy per tensor)."""
    enc_ids, enc_mask = pad_batch(prompts, pad)
    dec_ids, dec_mask = pad_batch(main_dec, pad)
    lab, _ = pad_batch(labels, IGNORE_INDEX)
    batch = DocBatch(enc_ids, enc_mask, dec_ids, dec_mask, lab,
                     torch.tensor(sorted(set(users)), dtype=torch.long),
                     torch.tensor(sorted(set(items)), dtype=torch.long))
    return to_device(batch, model_device(model))


def collab_prompt(model: Cllm4RecModel, pieces: PromptPieces, user: str | None) -> list[int]:
    """`user_u has interacted with` (without the user token for an unknown or absent user)."""
    u = model.user_token_id(user) if user is not None else None
    return ([u] if u is not None else []) + pieces.collab + [pieces.eos]


def collab_batch(model: Cllm4RecModel, pieces: PromptPieces,
                 docs: Sequence[tuple[str | None, Sequence[str]]]) -> DocBatch:
    """Collaborative documents `user_u has interacted with` -> `item_a item_b ...` (already in the
    order to use: the caller shuffles or crops them each epoch). A document whose user is None
    has no user token (it teaches the model histories without a known user)."""
    start = model.decoder_start_id
    prompts, dec, labels, users, items = [], [], [], [], []
    for user, seq in docs:
        idx = [model.item_index[i] for i in seq]
        prompts.append(collab_prompt(model, pieces, user))
        tokens = [model.item_offset + j for j in idx]
        dec.append([start] + tokens[:-1])
        labels.append(idx)
        if user is not None:
            users.append(model.user_index[user])
        items.extend(idx)
    return _doc_batch(model, prompts, dec, labels, users, items, pieces.pad)


def content_batch(model: Cllm4RecModel, pieces: PromptPieces, docs: Sequence[tuple[str, Sequence[int]]]) -> DocBatch:
    """Content documents `item_i is described as:` -> the item's text tokens (+ EOS)."""
    start = model.decoder_start_id
    prompts, dec, labels, items = [], [], [], []
    for item, text_ids in docs:
        j = model.item_index[item]
        prompts.append([model.item_offset + j] + pieces.content + [pieces.eos])
        target = list(text_ids) + [pieces.eos]
        dec.append([start] + target[:-1])
        labels.append(target)
        items.append(j)
    return _doc_batch(model, prompts, dec, labels, [], items, pieces.pad)


def doc_loss(model: Cllm4RecModel, batch: DocBatch, lm: str, reg_lambda: float) -> tuple[torch.Tensor, dict]:
    """Main-text negative log-likelihood of `lm` plus the mutual regularization
    lambda * ||z_lm - sg(z_other)||^2 over the users and items of the batch."""
    hidden = model.decode_hidden(batch.enc_ids, batch.enc_mask, batch.dec_ids, batch.dec_mask, lm)
    logits = model.item_logits(hidden, lm) if lm == "collab" else model.vocab_logits(hidden)
    nll = F.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.labels.reshape(-1), ignore_index=IGNORE_INDEX)
    reg = mutual_regularization(model, lm, batch.users, batch.items)
    loss = nll + reg_lambda * reg
    return loss, {"nll": nll.detach(), "reg": reg.detach()}  # 0-dim tensors: reading them waits for a GPU


def mutual_regularization(model: Cllm4RecModel, lm: str, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
    other = "content" if lm == "collab" else "collab"
    total = torch.zeros((), device=users.device)
    for kind, rows in (("user", users), ("item", items)):
        if rows.numel() == 0:
            continue
        mine = model.tables[lm][kind](rows)
        theirs = model.tables[other][kind](rows).detach()  # stop-gradient on the other LM
        total = total + (mine - theirs).pow(2).sum(-1).mean()
    return total


# --------------------------------------------------------------------------- recommendation prompts


def known_item_tokens(model: Cllm4RecModel, history: Sequence[str], max_items: int) -> list[int]:
    """Token ids of the last `max_items` history items the model has a token for (others skipped)."""
    return [t for t in (model.item_token_id(i) for i in history) if t is not None][-max_items:] if max_items else []


def recommend_prompt(model: Cllm4RecModel, pieces: PromptPieces, user: str | None, history: Sequence[str],
                     max_items: int) -> list[int]:
    """`user_u has interacted with item_a item_b , user_u will interact with` (the last max_items
    known items; items the model has no token for are skipped; an unknown or absent user drops
    the user tokens)."""
    u = model.user_token_id(user) if user is not None else None
    known = known_item_tokens(model, history, max_items)
    head = [u] if u is not None else []
    return head + pieces.collab + known + pieces.comma + head + pieces.recommend + [pieces.eos]


def mask_history(items: Sequence[str], share: float, rng: random.Random, *,
                 include_last: bool = False) -> tuple[list[str], list[str]]:
    """(kept, held out): a random `share` of the items held out, at least one, and at least one
    kept when there are two or more; the kept items keep their order. With `include_last`, the
    most recent item is always among the held-out ones (the rest drawn at random)."""
    items = list(dict.fromkeys(items))
    if len(items) < 2:
        return items, []
    n_out = min(max(1, round(share * len(items))), len(items) - 1)
    if include_last:
        out = {len(items) - 1} | set(rng.sample(range(len(items) - 1), n_out - 1))
    else:
        out = set(rng.sample(range(len(items)), n_out))
    kept = [x for i, x in enumerate(items) if i not in out]
    held = [x for i, x in enumerate(items) if i in out]
    return kept, held


@dataclass
class RecBatch:
    enc_ids: torch.Tensor
    enc_mask: torch.Tensor
    targets: torch.Tensor  # [B, items] multi-hot of the held-out items (r_j)


def finetune_batch(model: Cllm4RecModel, pieces: PromptPieces, examples: Sequence[tuple[str | None, Sequence[str], Sequence[str]]],
                   max_items: int) -> RecBatch:
    """examples: (user or None, kept items, held-out items) -> prompts and the multi-hot targets."""
    prompts = [recommend_prompt(model, pieces, user, kept, max_items) for user, kept, _ in examples]
    enc_ids, enc_mask = pad_batch(prompts, pieces.pad)
    targets = torch.zeros((len(examples), model.num_items))
    for row, (_, _, held) in enumerate(examples):
        for item in held:
            targets[row, model.item_index[item]] = 1.0
    return to_device(RecBatch(enc_ids, enc_mask, targets), model_device(model))


def multinomial_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """-sum_j r_j log p_j per user, averaged over the batch."""
    return -(targets * log_probs).sum(-1).mean()


# --------------------------------------------------------------------------- inference


class Cllm4RecRecommender:
    """History (+ optional user) in, top-k items out: one forward pass per batch."""

    def __init__(self, model: Cllm4RecModel, tokenizer: PreTrainedTokenizerBase, *, max_history: int = 50,
                 autocast: Callable[[torch.device], Any] | None = None, objective: str = "masked"):
        if objective not in OBJECTIVES:
            raise ValueError(f"objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
        self.model = model
        self.pieces = PromptPieces.from_tokenizer(tokenizer)
        self.max_history = max_history
        self.autocast = autocast  # device -> the forward pass's context (the method's precision)
        self.objective = objective

    @torch.inference_mode()
    def scores(self, histories: Sequence[Sequence[str]], users: Sequence[str | None] | None = None) -> torch.Tensor:
        users = list(users) if users is not None else [None] * len(histories)
        device = model_device(self.model)
        score = self._next_item_scores if self.objective == "next_item" else self._masked_scores
        with self.autocast(device) if self.autocast is not None else contextlib.nullcontext():
            return score(histories, users, device).float()

    def _masked_scores(self, histories, users, device) -> torch.Tensor:
        """The paper's prompt: the history's items in the encoder, one decoder step."""
        prompts = [recommend_prompt(self.model, self.pieces, u, h, self.max_history)
                   for u, h in zip(users, histories, strict=True)]
        enc_ids, enc_mask = pad_batch(prompts, self.pieces.pad, device=device)
        return self.model.score_items(enc_ids, enc_mask)

    def _next_item_scores(self, histories, users, device) -> torch.Tensor:
        """The next item after each user's collaborative document (its latest known items)."""
        prompts = [collab_prompt(self.model, self.pieces, u) for u in users]
        start = self.model.decoder_start_id
        docs = [[start] + known_item_tokens(self.model, h, self.max_history) for h in histories]
        enc_ids, enc_mask = pad_batch(prompts, self.pieces.pad, device=device)
        dec_ids, dec_mask = pad_batch(docs, self.pieces.pad, device=device)
        return self.model.score_next(enc_ids, enc_mask, dec_ids, dec_mask)

    def recommend(self, histories: Sequence[Sequence[str]], k: int, *, users: Sequence[str | None] | None = None,
                  exclude_history: bool = True, exclude_items: Sequence[Sequence[str]] | None = None,
                  allowed_items: Sequence[Collection[str] | None] | None = None,
                  ) -> list[list[Recommendation]]:
        """Top-k per history; `exclude_items[i]`: more items request i must not get;
        `allowed_items[i]`: the only items it may get (None: any). Both mask the score row."""
        if not histories:
            return []
        scores = self.scores(histories, users).clone()
        banned = [[*(history if exclude_history else ()), *(exclude_items[row] if exclude_items else ())]
                  for row, history in enumerate(histories)]
        mask_rows(scores, self.model.item_index, banned, allowed_items)
        return top_items(scores, self.model.item_ids, k)
