"""Whole-word masking for Chinese: the masking collator (80/10/10 decided per word) and its statistics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Masking:
    """What a masking parameter group describes: which tokens are chosen and what they become."""

    whole_word: bool = True  # choose whole words (jieba's), or single tokens
    probability: float = 0.15  # share of a sequence's tokens chosen
    mask_replace: float = 0.8  # share of chosen words replaced by [MASK]
    random_replace: float = 0.1  # share replaced by random tokens (the rest stay as they are)
    max_predictions: int = 0  # cap on chosen tokens per sequence (0: none)

    def collator(self, tokenizer, seed: int | None = None) -> WholeWordMaskCollator:
        return WholeWordMaskCollator(
            tokenizer, mlm_probability=self.probability, max_predictions=self.max_predictions or None,
            mask_replace_prob=self.mask_replace, random_replace_prob=self.random_replace, seed=seed,
            whole_word=self.whole_word,
        )  # fmt: skip


class WholeWordMaskCollator:
    """Masks whole words (or single tokens) for MLM, with 80/10/10 decided per word.

    Words are drawn in random order and taken while they fit, until about `mlm_probability` of the
    sequence's non-special tokens are chosen (at most `max_predictions`; at least one word). Each
    chosen word then becomes [MASK] (`mask_replace_prob`), random tokens (`random_replace_prob`) or
    stays as it is; every token of a word gets the same treatment. Special tokens and padding are
    never chosen; labels are -100 except at chosen tokens.

    Masking is dynamic (new masks every batch) and reproducible under `seed`. An example that
    carries a `mask_seed` is masked from that seed alone: static masking (`dupe_factor`
    copies are `mask_seed = hash(example, copy)`). `whole_word=False` masks single tokens, the
    token-level baseline with the same interface.
    """

    def __init__(
        self,
        tokenizer,
        *,
        mlm_probability: float = 0.15,
        max_predictions: int | None = None,
        mask_replace_prob: float = 0.8,
        random_replace_prob: float = 0.1,
        seed: int | None = None,
        whole_word: bool = True,
    ):
        if not 0 < mlm_probability < 1:
            raise ValueError(f"mlm_probability = {mlm_probability}: must be between 0 and 1")
        if (
            mask_replace_prob < 0
            or random_replace_prob < 0
            or mask_replace_prob + random_replace_prob > 1
        ):
            raise ValueError("mask_replace_prob + random_replace_prob must lie in [0, 1]")
        self.tokenizer = tokenizer
        self.mlm_probability = mlm_probability
        self.max_predictions = max_predictions
        self.mask_replace_prob = mask_replace_prob
        self.random_replace_prob = random_replace_prob
        self.whole_word = whole_word
        self.mask_id = tokenizer.mask_token_id
        self.pad_id = tokenizer.pad_token_id
        specials = set(tokenizer.all_special_ids)
        self.random_ids = np.array([i for i in range(len(tokenizer)) if i not in specials])
        self.rng = np.random.default_rng(seed)

    def reseed(self, seed) -> None:
        """Restart the random stream (the training loop reseeds per step, so resume is exact)."""
        self.rng = np.random.default_rng(seed)

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(e["input_ids"]) for e in examples)
        n = len(examples)
        input_ids = np.full((n, width), self.pad_id, dtype=np.int64)
        word_ids = np.full((n, width), -1, dtype=np.int64)
        attention = np.zeros((n, width), dtype=np.int64)
        for b, e in enumerate(examples):
            k = len(e["input_ids"])
            input_ids[b, :k] = e["input_ids"]
            word_ids[b, :k] = e["word_ids"]
            attention[b, :k] = 1
        attention[input_ids == self.pad_id] = 0
        labels = np.full_like(input_ids, -100)
        for b, e in enumerate(examples):
            rng = np.random.default_rng(e["mask_seed"]) if "mask_seed" in e else self.rng
            self._mask_row(input_ids[b], word_ids[b], labels[b], rng)
        return {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
            "labels": torch.from_numpy(labels),
        }

    def _mask_row(self, ids: np.ndarray, wids: np.ndarray, labels: np.ndarray, rng) -> None:
        """Mask one sequence in place. ids, wids, labels: (T,)."""
        maskable = wids >= 0
        n_tokens = int(maskable.sum())
        if n_tokens == 0:
            return
        if self.whole_word:
            _, word_of = np.unique(wids[maskable], return_inverse=True)  # 0..W-1 per token
        else:
            word_of = np.arange(n_tokens)
        positions = np.flatnonzero(maskable)
        lengths = np.bincount(word_of)
        target = max(1, int(round(self.mlm_probability * n_tokens)))
        if self.max_predictions:
            target = min(target, self.max_predictions)
        chosen, total = [], 0
        for w in rng.permutation(len(lengths)):  # take words while they fit (Google's rule)
            if total + lengths[w] > target:
                continue
            chosen.append(w)
            total += lengths[w]
            if total >= target:
                break
        if not chosen:  # every word is longer than the target: take the shortest one
            chosen = [int(np.argmin(lengths))]
        chosen = np.asarray(chosen)
        action = rng.random(len(chosen))  # one draw per word: 80/10/10 at word level
        mask_words = chosen[action < self.mask_replace_prob]
        rand_words = chosen[
            (action >= self.mask_replace_prob)
            & (action < self.mask_replace_prob + self.random_replace_prob)
        ]
        chosen_pos = positions[np.isin(word_of, chosen)]
        labels[chosen_pos] = ids[chosen_pos]
        ids[positions[np.isin(word_of, mask_words)]] = self.mask_id
        rand_pos = positions[np.isin(word_of, rand_words)]
        ids[rand_pos] = rng.choice(self.random_ids, size=len(rand_pos))


def static_copies(n_examples: int, dupe_factor: int, seed: int) -> np.ndarray:
    """`mask_seed`s for `dupe_factor` fixed maskings of each example: shape (n_examples, dupe_factor)."""
    ss = np.random.SeedSequence([seed, n_examples, dupe_factor])
    return ss.generate_state(n_examples * dupe_factor, dtype=np.uint64).reshape(
        n_examples, dupe_factor
    )


def mask_statistics(
    collator: WholeWordMaskCollator, examples: list[dict], *, batch_size: int = 64
) -> dict:
    """Actual mask rate, 80/10/10 shares at word level, masked-word lengths, on `examples`."""
    chosen_tokens = maskable = 0
    actions = {"mask": 0, "random": 0, "kept": 0}
    word_lengths: list[int] = []
    per_seq: list[float] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start : start + batch_size]
        batch = collator(chunk)
        for b, e in enumerate(chunk):
            ids = np.asarray(e["input_ids"])
            wids = np.asarray(e["word_ids"])
            out = batch["input_ids"][b, : len(ids)].numpy()
            lab = batch["labels"][b, : len(ids)].numpy()
            n = int((wids >= 0).sum())
            chosen = lab != -100
            maskable += n
            chosen_tokens += int(chosen.sum())
            per_seq.append(chosen.sum() / max(1, n))
            # group chosen tokens by word (token-level mode: every token is a word)
            keys = wids[chosen] if collator.whole_word else np.flatnonzero(chosen)
            for w in np.unique(keys):
                at = np.flatnonzero(chosen)[keys == w]
                word_lengths.append(len(at))
                if (out[at] == collator.mask_id).all():
                    actions["mask"] += 1
                elif (out[at] == ids[at]).all():
                    actions["kept"] += 1
                else:
                    actions["random"] += 1
    n_words = max(1, sum(actions.values()))
    lengths = np.bincount(word_lengths, minlength=6)[1:]
    return {
        "mask_rate": chosen_tokens / max(1, maskable),
        "shares": {k: v / n_words for k, v in actions.items()},
        "masked_words": n_words,
        "word_length_counts": lengths.tolist(),  # index 0 = one token
        "multi_token_word_share": float(lengths[1:].sum() / max(1, lengths.sum())),
        "per_sequence_rate": per_seq,
    }


def builtin_comparison(tokenizer, texts: list[str], *, mlm_probability: float, seed: int) -> dict:
    """transformers' own `whole_word_mask=True` on unspaced Chinese: the share of sequences that come
    out fully masked or not masked at all, and its [MASK] share."""
    import warnings

    from transformers import DataCollatorForLanguageModeling

    warnings.filterwarnings("ignore", "Random token replacement is not supported")  # measured below
    collator = DataCollatorForLanguageModeling(
        tokenizer, mlm=True, whole_word_mask=True, mlm_probability=mlm_probability, seed=seed
    )
    rates, mask_share_num, mask_share_den = [], 0, 0
    for start in range(0, len(texts), 64):
        enc = tokenizer(
            texts[start : start + 64],
            truncation=True,
            max_length=128,
            padding=True,  # its own padding leaves offset_mapping ragged
            return_offsets_mapping=True,
            return_special_tokens_mask=True,
        )
        examples = [{k: enc[k][i] for k in enc} for i in range(len(enc["input_ids"]))]
        batch = collator(examples)
        labels = batch["labels"].numpy()
        ids = batch["input_ids"].numpy()
        for i, ex in enumerate(examples):
            n = int(len(ex["input_ids"]) - sum(ex["special_tokens_mask"]))  # pads count as special
            chosen = labels[i] != -100
            rates.append(chosen.sum() / max(1, n))
            mask_share_num += int((ids[i][chosen] == tokenizer.mask_token_id).sum())
            mask_share_den += int(chosen.sum())
    rates = np.asarray(rates)
    return {
        "sequences": len(rates),
        "all_masked": float((rates >= 0.999).mean()),
        "none_masked": float((rates == 0).mean()),
        "all_or_nothing": float(((rates >= 0.999) | (rates == 0)).mean()),
        "mean_mask_rate": float(rates.mean()),
        "mask_token_share": mask_share_num / max(1, mask_share_den),
        "per_sequence_rate": rates.tolist(),
    }
