import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab.core import hardware, kd, kdcache, models, sources, vocab, wordpiece
from lab.core.kd import DistillError
from lab.core.kdcache import CachedBatches, build_cache
from lab.core.masking import WholeWordMaskCollator
from lab.core.train import autocast


def test_layer_maps():
    assert kd.uniform_map(2, 4) == [1, 3]
    assert kd.uniform_map(6, 12) == [1, 3, 5, 7, 9, 11]
    assert kd.check_layer_map([], 3, 6, "x") == [1, 3, 5]
    with pytest.raises(
        DistillError, match="names teacher layers \\[7\\]; the teacher has layers 0..5"
    ):
        kd.check_layer_map([0, 7], 2, 6, "kd.layer_map")
    with pytest.raises(DistillError, match="has 3 entries; the student has 2 layers"):
        kd.check_layer_map([0, 1, 2], 2, 6, "kd.layer_map")


def test_assistant_copies_the_chosen_teacher_layers():
    teacher = models.build("L4_H64", 300, seed=0)
    ta = kd.student_from_teacher(teacher, [0, 3], seed=1)
    assert ta.config.num_hidden_layers == 2
    t, s = teacher.state_dict(), ta.state_dict()
    for k in s:
        src = k.replace("encoder.layer.1.", "encoder.layer.3.")
        assert torch.equal(s[k], t[src]), k


def test_weight_selection_keeps_whole_heads_and_evenly_spaced_dimensions():
    teacher = models.build("L4_H64_A4", 300, seed=0)  # heads of 16
    student = models.build("L2_H32_A2", 300, seed=1, max_positions=512)
    kept = kd.select_weights(student, teacher, [1, 3])
    assert kept == [0, 3]
    hid = torch.linspace(0, 63, 32).round().long()
    qkv = torch.cat([torch.arange(0, 16), torch.arange(48, 64)])
    t_q = teacher.bert.encoder.layer[3].attention.self.query.weight
    assert torch.equal(student.bert.encoder.layer[1].attention.self.query.weight, t_q[qkv][:, hid])
    t_out = teacher.bert.encoder.layer[1].output.dense.weight  # (64, 256)
    ffn = torch.linspace(0, 255, 128).round().long()
    assert torch.equal(student.bert.encoder.layer[0].output.dense.weight, t_out[hid][:, ffn])
    assert torch.equal(
        student.bert.embeddings.word_embeddings.weight,
        teacher.bert.embeddings.word_embeddings.weight[:, hid],
    )
    assert torch.equal(student.cls.predictions.bias, teacher.cls.predictions.bias)
    student(input_ids=torch.randint(5, 300, (2, 12)))  # a working plain BERT


def test_weight_selection_at_the_same_width_is_the_teacher():
    teacher = models.build("L2_H32_A2", 300, seed=0).eval()
    student = models.build("L2_H32_A2", 300, seed=1, max_positions=512).eval()
    kd.select_weights(student, teacher, [0, 1])
    x = torch.randint(5, 300, (2, 12))
    assert torch.equal(student(input_ids=x).logits, teacher(input_ids=x).logits)
    with pytest.raises(DistillError, match="keeps whole heads"):
        kd.select_weights(models.build("L2_H32_A4", 300, seed=1), teacher, [0, 1])


def test_kd_loss_is_hinton_kd_as_kl_with_full_vocab_and_t2_scaling():
    torch.manual_seed(0)
    s, t = torch.randn(5, 50), torch.randn(5, 50)
    T = 4.0
    idx = torch.arange(50).expand(5, 50)
    target = F.log_softmax(t / T, -1)
    expected = (target.exp() * (target - F.log_softmax(s / T, -1))).sum(-1).mean()
    assert torch.allclose(
        kd.kd_loss(s, F.log_softmax(t, -1), idx, T, t2=False), expected, atol=1e-6
    )
    assert torch.allclose(
        kd.kd_loss(s, F.log_softmax(t, -1), idx, T, t2=True), expected * T * T, atol=1e-5
    )


@pytest.mark.parametrize("loss", ["kd", "topk"])
def test_truncated_targets_leave_the_tokens_outside_the_top_k_alone(loss):
    """A student that already matches the teacher gets no gradient from a top-k target: the loss
    must not push the probability of tokens the cache does not hold (the true one among them)."""
    torch.manual_seed(0)
    t = torch.randn(4, 30)
    logp = F.log_softmax(t, -1)
    top_logp, top_idx = logp.topk(5, dim=-1)
    s = t.clone().requires_grad_(True)
    if loss == "kd":
        kd.kd_loss(s, top_logp, top_idx, 8.0, t2=True).backward()
    else:
        kd.topk_loss(s, top_logp, top_idx).backward()
    assert s.grad.abs().max() < 1e-5


def test_topk_loss_of_a_perfect_student_is_the_target_entropy():
    z = torch.randn(3, 40)
    logp = F.log_softmax(z, -1)
    idx = torch.arange(40).expand(3, 40)
    entropy = -(logp.exp() * logp).sum(-1).mean()
    assert torch.allclose(kd.topk_loss(z, logp, idx), entropy, atol=1e-5)


def _batch(tok, n=4, length=24, seed=0):
    g = np.random.default_rng(seed)
    texts = [
        "".join(g.choice(list("中国的首都是北京我们学习语言模型很好用"), size=length))
        for _ in range(n)
    ]
    examples = wordpiece.encode(texts, tok, max_length=length)
    return WholeWordMaskCollator(tok, seed=seed, mlm_probability=0.3)(examples)


@pytest.fixture(scope="module")
def tok():
    return vocab.make_tokenizer(sources.load("bert_vocab"))


def test_online_distiller_all_terms(tok):
    teacher = models.build("L2_H64", len(tok), seed=0, attn_implementation="eager")
    student = models.build("L1_H32_A2", len(tok), seed=1, attn_implementation="eager")
    weights = {"kd": 1.0, "mlm": 1.0, "hidden": 1.0, "attention": 1.0, "topk": 1.0}
    module = kd.Distiller(
        student, teacher, weights=weights, temperature=8.0, t2=True, layer_map=[1], topk=16
    )
    out = module(**_batch(tok))
    assert set(out) >= {"loss", "kd", "mlm", "hidden", "attention", "topk"}
    out["loss"].backward()
    assert student.bert.embeddings.word_embeddings.weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())  # the teacher is never trained


@pytest.mark.parametrize("k", [8, 40])
def test_top_logp_is_torchs_log_softmax_and_topk_a_block_of_rows_at_a_time(k):
    """Values and ids exactly torch's, ties included (bfloat16 logits tie often), for k below and
    above the widest mass; the wide values are torch's top 32."""
    torch.manual_seed(0)
    logits = (4 * torch.randn(kdcache.ROWS + 44, 3000)).to(torch.bfloat16)  # two blocks
    values, ids, top = kdcache.top_logp(logits, k, wide=32)
    logp = F.log_softmax(logits.float(), -1)
    theirs = logp.topk(k, dim=-1)
    assert torch.equal(values, theirs.values) and torch.equal(ids, theirs.indices)
    assert torch.equal(top, logp.topk(max(k, 32), dim=-1).values)
    assert kdcache.top_logp(logits, 5000)[0].shape == (len(logits), 3000)  # k past the vocabulary
    assert kdcache.top_logp(logits[:0], k, wide=32)[2].shape == (0, max(k, 32))


def test_cache_round_trip_and_stale_teacher(tok, tmp_path):
    teacher = models.build("L2_H64", len(tok), seed=0)
    texts = ["中国的首都是北京。我们学习语言模型，很好用。"] * 40
    seg_words = [wordpiece._segmenter("jieba").cut(t) for t in texts]
    ids, wids, counts = wordpiece.WordTokenizer(tok)(seg_words)
    x, w = wordpiece.pack(ids, wids, counts, seq_len=32, cls_id=101, sep_id=102, pad_id=0)
    col = WholeWordMaskCollator(tok, seed=0)

    def cache(digest):
        return build_cache(teacher, x, w, col, tmp_path / "c", dupe_factor=2,
                                   n_sequences=20, topk=8, seed=0, teacher_digest=digest)  # fmt: skip

    meta = cache("aaa")
    mass = meta["truncation_mass"]  # the teacher's probability kept by its top 8 and top 32
    assert mass.keys() == {"8", "32"} and 0 < mass["8"] <= mass["32"] <= 1
    assert meta["masked_positions"] > 0
    with torch.no_grad(), autocast(torch.device("cpu"), True):  # the teacher again, as cached
        masked = torch.from_numpy(np.load(tmp_path / "c" / "input_ids.npy")).long()
        chosen = torch.from_numpy(np.load(tmp_path / "c" / "labels.npy")) != -100
        logp = F.log_softmax(teacher.cls(teacher.bert(input_ids=masked)[0][chosen]).float(), -1)
    stored = torch.from_numpy(np.load(tmp_path / "c" / "topk_logp.npy"))
    ids = torch.from_numpy(np.load(tmp_path / "c" / "topk_idx.npy")).long()
    assert torch.equal(stored, logp.topk(8, dim=-1).values.half())
    assert torch.equal(ids, logp.topk(8, dim=-1).indices)  # among ties too
    assert torch.equal(logp.gather(-1, ids).half(), stored)  # each id beside its own value
    for n in (8, 32):
        kept = float(logp.exp().topk(n, dim=-1).values.sum()) / len(logp)
        assert mass[str(n)] == pytest.approx(kept, rel=1e-5)
    batch = CachedBatches(tmp_path / "c", 4, 0)(0)
    n_masked = int((batch["labels"] != -100).sum())
    assert batch["topk_logp"].shape == (n_masked, 8) and batch["topk_idx"].dtype == torch.int32
    student = models.build("L1_H32_A2", len(tok), seed=1)
    module = kd.Distiller(
        student,
        None,
        weights={"kd": 1.0, "mlm": 1.0},
        temperature=2.0,
        t2=True,
        layer_map=[1],
        topk=8,
    )
    assert torch.isfinite(module(**batch)["loss"])
    with pytest.raises(DistillError, match="holds logits of another teacher"):
        cache("bbb")


WEIGHTS = [{"kd": 0.7, "mlm": 1.3}, {"kd": 1.0}, {"topk": 1.0, "mlm": 1.0}]


@pytest.mark.parametrize("weights", WEIGHTS, ids=["kd+mlm", "kd", "topk+mlm"])
@pytest.mark.parametrize("fused", [False, True], ids=["chunks", "compiled"])
def test_cached_distiller_is_kd_plus_cross_entropy_written_out(tok, fused, weights):
    """The cached Distiller takes its MLM term, accuracy and top-k logits from one pass
    (`mlm.MaskedCE`); its loss, terms and every student gradient are those of `kd_loss`,
    `topk_loss` and `F.cross_entropy` on the student's logits, computed here the plain way (in
    float32, where the accuracy's ties with the top logit do not occur)."""
    if fused and hardware.compiler():
        pytest.skip(hardware.compiler())
    torch.manual_seed(0)
    batch = _batch(tok, n=6, length=32)
    chosen = batch["labels"] != -100
    n = int(chosen.sum())
    logp = F.log_softmax(3 * torch.randn(n, len(tok)), -1)
    batch["topk_logp"], batch["topk_idx"] = logp.topk(16, dim=-1)
    batch["topk_idx"] = batch["topk_idx"].int()  # as the cache stores them
    student = models.build("L1_H32_A2", len(tok), seed=1, dropout=0.0)
    module = kd.Distiller(student, None, weights=weights, temperature=4.0, t2=True, layer_map=[0],
                          topk=16)  # fmt: skip
    module.fused_loss = fused
    out = module(**batch)
    out["loss"].backward()
    ours = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
    student.zero_grad(set_to_none=True)

    s = student.cls(student.bert(input_ids=batch["input_ids"],
                                 attention_mask=batch["attention_mask"])[0][chosen])  # fmt: skip
    plain = {
        "kd": kd.kd_loss(s, batch["topk_logp"], batch["topk_idx"], 4.0, t2=True),
        "topk": kd.topk_loss(s, batch["topk_logp"], batch["topk_idx"]),
        "mlm": F.cross_entropy(s.float(), batch["labels"][chosen]),
    }
    sum(w * plain[k] for k, w in weights.items()).backward()

    assert out.keys() == {"loss", "acc", *weights}
    for k in weights:
        assert float(out[k]) == pytest.approx(float(plain[k].detach()), rel=1e-5), k
    assert float(out["acc"]) == pytest.approx(
        float((s.argmax(-1) == batch["labels"][chosen]).float().mean())
    )
    assert ours.keys() == {k for k, p in student.named_parameters() if p.grad is not None}
    for k, p in student.named_parameters():
        if p.grad is not None:
            assert torch.allclose(ours[k], p.grad, atol=1e-6, rtol=1e-4), k


def test_cached_mode_refuses_hidden_losses(tok):
    student = models.build("L1_H32_A2", len(tok), seed=1)
    with pytest.raises(DistillError, match="need the teacher online"):
        kd.Distiller(
            student, None, weights={"hidden": 1.0}, temperature=1.0, t2=False, layer_map=[0], topk=8
        )


def test_kd_sanity_flags_a_flat_kd_term():
    log = [{"step": i, "loss": 1.0, "kd": 2.0, "mlm": 5.0 - 0.04 * i} for i in range(100)]
    assert kd.kd_sanity(log)["flag"]
    log = [
        {"step": i, "loss": 1.0, "kd": 2.0 - 0.01 * i, "mlm": 5.0 - 0.04 * i} for i in range(100)
    ]
    assert not kd.kd_sanity(log)["flag"]
