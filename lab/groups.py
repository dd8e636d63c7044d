"""The parameter groups stages share, each declared once with its checks and with the one method
that turns it into what it describes: `MaskShares` / `Masking` (the masking rule and its collator),
`Loop` (the training loop's configuration), `Segmentation` (the jieba segmenter). A stage lists its
groups before `StageConfig`: `class PretrainConfig(Masking, Loop, StageConfig)`. Also the checks
that a stage and the dry run both make."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lab.core import budget, masking, segment
from lab.params import ConfigError, StageConfig, param


def check_share(cfg: StageConfig, name: str) -> None:
    if getattr(cfg, name) > 1:
        raise cfg.fail(name, "a share of the steps, between 0 and 1")


def cache_refusal(need: float, free: float) -> str:
    """Why a distillation's teacher cache cannot be written, and the fix."""
    return (
        f"distill: the teacher cache needs {budget.gb(need)} but the disk has {budget.gb(free)} free; run the "
        "teacher online (-p distill.mode=online), keep fewer entries (-p distill.topk=...) or take fewer steps"
    )


@dataclass(frozen=True)
class MaskShares:
    """How many tokens are chosen for masking, and what the chosen words become."""

    mlm_probability: float = param("share of tokens chosen for masking", min=0.0)
    mask_replace_prob: float = param("share of chosen words replaced by [MASK]", min=0.0)
    random_replace_prob: float = param("share of chosen words replaced by random tokens", min=0.0)
    max_predictions: int = param("cap on chosen tokens per sequence (0: none)", min=0)

    def check(self):
        if not 0 < self.mlm_probability < 1:
            raise self.fail("mlm_probability", "must be between 0 and 1")
        if self.mask_replace_prob + self.random_replace_prob > 1:
            raise ConfigError(
                f"{self.stage}.mask_replace_prob + {self.stage}.random_replace_prob must not exceed 1"
            )
        super().check()

    def mask_rule(self, *, whole_word: bool = True) -> masking.Masking:
        return masking.Masking(
            whole_word=whole_word, probability=self.mlm_probability,
            mask_replace=self.mask_replace_prob, random_replace=self.random_replace_prob,
            max_predictions=self.max_predictions,
        )  # fmt: skip


@dataclass(frozen=True)
class Masking(MaskShares):
    """The masking of a training stage: whole words or single tokens, and the shares."""

    masking: str = param("wwm (whole words) or token (single tokens)", choices=("wwm", "token"))

    def mask_rule(self, *, whole_word: bool | None = None) -> masking.Masking:
        return super().mask_rule(
            whole_word=self.masking == "wwm" if whole_word is None else whole_word
        )


@dataclass(frozen=True)
class Loop:
    """How the common training loop runs (`lab.core.train`)."""

    warmup: float = param("warmup as a share of each training run's steps", min=0.0)
    schedule: str = param("decay after warmup", choices=("linear", "cosine", "constant"))
    weight_decay: float = param("AdamW weight decay", min=0.0)
    clip: float = param("max gradient norm (0: off)", min=0.0)
    grad_accum: int = param("micro-batches per optimizer step", min=1)
    processes: int = param(
        "data-parallel processes the plan assumes (torchrun --nproc_per_node); a run uses the "
        "processes it is launched with",
        min=1,
    )
    bf16: bool = param("bfloat16 autocast where the hardware supports it")
    compile: bool = param(
        "torch.compile the model's encoders (uncompiled where no compiler is found)"
    )
    ckpt_every: int = param("steps between checkpoints (resume points)", min=1)

    def check(self):
        if self.warmup >= 1:
            raise self.fail("warmup", "a share of the steps, below 1")
        super().check()

    def loop(self, *, steps: int, lr: float, seed: int, **more) -> dict:
        """`lab.core.train.TrainConfig`'s arguments for one training run of `steps` at peak rate `lr`:
        `train.TrainConfig(**cfg.loop(...))`."""
        return dict(
            steps=steps, lr=lr, warmup_steps=max(1, int(self.warmup * steps)), schedule=self.schedule,
            weight_decay=self.weight_decay, clip=self.clip, grad_accum=self.grad_accum, bf16=self.bf16,
            ckpt_every=self.ckpt_every, seed=seed, compile=self.compile, **more,
        )  # fmt: skip


@dataclass(frozen=True)
class Segmentation:
    """The jieba segmenter that finds the words of whole-word masking."""

    segmenter: str = param(
        "jieba (rjieba where identical) or jieba-python", choices=segment.SEGMENTERS
    )
    user_dict: str = param("path of a jieba user dictionary (empty: none)")
    user_words: list[str] = param("extra words the segmenter must keep whole")

    def check(self):
        if self.user_dict and not Path(self.user_dict).expanduser().is_file():
            raise self.fail("user_dict", "no such file (a jieba dictionary: one word a line)")
        super().check()

    def segmenter_obj(self) -> segment.Segmenter:
        return segmenter_of(dataclasses.asdict(self), self.stage)


def segmenter_of(values: Mapping, stage: str = "wwm") -> segment.Segmenter:
    """The segmenter a `Segmentation` group describes, from a config or from a stage's manifest
    parameters (a later stage segments as the wwm stage did)."""
    try:
        return segment.Segmenter(
            values["segmenter"], user_dict=values["user_dict"], words=tuple(values["user_words"])
        )
    except segment.SegmenterError as err:
        raise ConfigError(f"{stage}: {err}") from None
