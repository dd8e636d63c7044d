"""Checkpoints a researcher might bring, made with plain transformers and tokenizers (none of the
lab's code builds them) and saved as `save_pretrained` saves them: a BERT and an ALBERT with the
21,128-token Chinese BERT vocabulary, a BERT and a ModernBERT with vocabularies of their own, and a
hub cache laid out as the hub client lays it out."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

SMALL = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
             max_position_embeddings=512)  # fmt: skip


def bert_tokenizer(folder: Path):
    """The bert-base-chinese tokenizer, as a published Chinese checkpoint ships it: a vocab.txt
    (tokens from the lab's offline source cache), loaded by transformers and saved back."""
    from transformers import BertTokenizer

    from lab.core import sources

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text(
        "".join(t + "\n" for t in sources.load("bert_vocab")), encoding="utf-8"
    )
    return BertTokenizer.from_pretrained(str(folder))


def chinese_bert(folder: Path, *, head: bool = True, seed: int = 0) -> Path:
    from transformers import BertConfig, BertForMaskedLM, BertModel

    torch.manual_seed(seed)
    tok = bert_tokenizer(folder)
    config = BertConfig(vocab_size=len(tok), **SMALL)
    model = BertForMaskedLM(config) if head else BertModel(config)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def bert_own_vocab(folder: Path, size: int = 3000, seed: int = 3) -> Path:
    """A BERT whose vocabulary is its own: the special tokens, then bert-base-chinese's first
    `size` CJK characters in reverse order (what CLUE's or a UER miniature's vocab.txt looks like to
    the lab: Chinese WordPiece, ids nothing like the run's)."""
    from transformers import BertConfig, BertForMaskedLM, BertTokenizer

    from lab.core import sources

    torch.manual_seed(seed)
    cjk = [t for t in sources.load("bert_vocab") if len(t) == 1 and "\u4e00" <= t <= "\u9fff"]
    tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "，", "。", *reversed(cjk[:size])]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("".join(t + "\n" for t in tokens), encoding="utf-8")
    tok = BertTokenizer.from_pretrained(str(folder))
    BertForMaskedLM(BertConfig(vocab_size=len(tok), **SMALL)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def chinese_albert(folder: Path, seed: int = 1) -> Path:
    """ALBERT as the Chinese ALBERT checkpoints ship it: BERT's vocabulary and tokenizer."""
    from transformers import AlbertConfig, AlbertForMaskedLM

    torch.manual_seed(seed)
    tok = bert_tokenizer(folder)
    config = AlbertConfig(vocab_size=len(tok), embedding_size=16, **SMALL)
    AlbertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def small_modernbert(folder: Path, chars: str, seed: int = 2) -> Path:
    """A ModernBERT whose vocabulary is its own: the special tokens and `chars`, in that order."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import ModernBertConfig, ModernBertForMaskedLM, PreTrainedTokenizerFast

    torch.manual_seed(seed)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(specials + sorted(set(chars) - set(specials)))}
    backend = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    backend.normalizer = normalizers.BertNormalizer(lowercase=True)
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )  # fmt: skip
    tok = PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
        sep_token="[SEP]", mask_token="[MASK]", model_input_names=["input_ids", "attention_mask"],
    )  # fmt: skip
    small = {k: v for k, v in SMALL.items()}
    config = ModernBertConfig(vocab_size=len(vocab), pad_token_id=0, cls_token_id=2, sep_token_id=3,
                              bos_token_id=2, eos_token_id=3, global_attn_every_n_layers=2,
                              local_attention=64, **small)  # fmt: skip
    ModernBertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def hub_cache(home: Path, name: str, model_folder: Path, commit: str = "0" * 40) -> Path:
    """`model_folder` as the hub client caches `name` under HF_HOME=home: blobs, a snapshot folder
    per commit linking to them, and refs/main naming the commit. Returns the snapshot folder."""
    repo = home / "hub" / f"models--{name.replace('/', '--')}"
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, f in enumerate(sorted(p for p in model_folder.iterdir() if p.is_file())):
        blob = repo / "blobs" / f"blob{i:04d}"
        shutil.copyfile(f, blob)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob.name))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snapshot
