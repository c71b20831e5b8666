"""IDGenRec's training half: ID-generator warm-up on keyword targets -> minting the catalog's
IDs -> the recommender (alone, or alternating with ID-generator phases) -> the trained method.
"""

from __future__ import annotations

import time

from genrec.bundle import BundleItem
from genrec.idgenrec.method import GENERATOR_DIR, RECOMMENDER_DIR, IdGenRec
from genrec.idgenrec.prompts import prompt_corpus
from genrec.item_text import metadata_values_text
from genrec.modeling import build_t5

from ..alternate import UserIds, build_trie, mint_state, train_alternating, uses_user_ids
from ..id_generator import warm_up_generator
from ..keywords import keyword_targets
from ..stable_ids import kept_ids, kept_stats
from .base import RunContext, Trained, Trainer


class IdGenRecTrainer(Trainer):
    kind = "idgenrec"
    supports_ddp = True  # the recommender phases shard; ID phases run alike on every rank

    def tokenizer_corpus(self, texts: list[str]) -> list[str]:
        return texts + prompt_corpus()

    def train(self, ctx: RunContext) -> Trained:
        config, dataset, tokenizer, log = ctx.config, ctx.dataset, ctx.tokenizer, ctx.log
        timings: dict[str, float] = {}
        item_ids = list(dataset.catalog.items)
        texts = [dataset.item_text[i] for i in item_ids]
        metadata = [dataset.catalog.items[i] for i in item_ids]

        t = time.perf_counter()
        generator = build_t5(config.generator.model, tokenizer, seed=config.seed).to(ctx.device)
        warm_loss = warm_up_generator(
            generator, tokenizer, texts, keyword_targets(metadata, config.generator.keyword_count),
            epochs=config.generator.warmup_epochs, lr=config.generator.lr, batch_size=config.generator.batch_size,
            seed=config.seed, max_source_length=config.generator.mint.max_source_length,
            length_grouped=config.generator.length_grouped, progress=ctx.progress, log=log,
        )
        timings["generator_warmup"] = time.perf_counter() - t

        t = time.perf_counter()
        vocabulary_texts = [metadata_values_text(m) for m in metadata]
        kept = kept_ids(tokenizer, item_ids, ctx.previous_ids) if ctx.previous_ids else None
        ids = mint_state(generator, tokenizer, item_ids, texts, vocabulary_texts, config.generator.mint,
                         progress=ctx.progress, kept=kept)
        timings["minting"] = time.perf_counter() - t
        stats = ids.stats
        log(f"IDs: {stats.items} unique, mean {stats.mean_words:.2f} words / {stats.mean_tokens:.2f} tokens, "
            f"raised penalty {stats.raised_penalty}, raised length {stats.raised_length}, suffixed {stats.suffixed}"
            + (f", {stats.kept} kept from the previous version" if kept else ""))

        eos = tokenizer.eos_token_id
        recommender_model = build_t5(config.recommender.model, tokenizer, seed=config.seed + 1).to(ctx.device)
        method = IdGenRec(recommender_model, generator, tokenizer, config)
        method.precision = config.precision  # validation runs as the service would
        method.recommender.trie = build_trie(item_ids, ids.item_tokens, eos)
        user_ids = None
        if uses_user_ids(config):
            user_ids = UserIds(
                generator, tokenizer, ids.item_tokens, max_words=config.alternate.user_id_max_words,
                max_source_length=config.generator.mint.max_source_length, progress=ctx.progress,
            )

        def validate(_model) -> float:
            # The method's trie is the current one: alternate training swaps it after each re-mint.
            method.clear_user_ids()
            return ctx.validate(method, method.recommender.trie, config.recommender.valid_users)

        t = time.perf_counter()
        ids, history = train_alternating(
            config, generator=generator, recommender_model=recommender_model, recommender=method.recommender,
            tokenizer=tokenizer, split=dataset.split, item_ids=item_ids, texts=texts,
            vocabulary_texts=vocabulary_texts, ids=ids, user_ids=user_ids, validate=validate,
            progress=ctx.progress, log=log, kept=kept,
        )
        timings["recommender_training"] = time.perf_counter() - t
        history["generator_warmup_loss"] = warm_loss
        method.clear_user_ids()
        items = [
            BundleItem(item_id=i, textual_id=m.textual_id, token_ids=ids.item_tokens[i] + [eos], text=dataset.item_text[i])
            for i, m in zip(item_ids, ids.minted, strict=True)
        ]
        id_stats = ids.stats.to_dict()
        if kept is not None:
            id_stats["previous"] = kept_stats(item_ids, ctx.previous_ids, kept)
        return Trained(
            method=method, items=items, models={RECOMMENDER_DIR: recommender_model, GENERATOR_DIR: generator},
            history=history, id_stats=id_stats, timings=timings,
        )
