"""The training loss: cross-entropy on the answer tokens, plus optional KL distillation from the uncompressed,
adapter-free backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from train.sources import IGNORE_INDEX


def pruned_labels(labels: Tensor, source_index: Tensor | None) -> Tensor:
    """``(B, L')`` labels of the pruned sequence: ``labels[b, source_index[b, t]]``, -100 on padding."""
    if source_index is None:
        return labels
    gathered = labels.gather(1, source_index.clamp(min=0))
    return gathered.masked_fill(source_index < 0, IGNORE_INDEX)


def answer_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """``(n, V)`` logits at the positions that predict an answer token (``labels[t + 1] != -100``)."""
    predicts = labels[:, 1:] != IGNORE_INDEX  # (B, L - 1)
    return logits[:, :-1][predicts]


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean next-token CE over the answer tokens: ``-mean_t log softmax(z_t)[y_{t+1}]`` (labels aligned to
    ``logits``; -100 ignored)."""
    return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)


def per_sample_cross_entropy(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """``(loss, per_sample)``: :func:`cross_entropy` (mean over every answer token of the batch) and ``(B,)`` the
    mean over each row's own answer tokens (0 for a row without any)."""
    targets = labels[:, 1:]  # (B, L - 1): token t + 1 is predicted at t
    token_loss = F.cross_entropy(logits[:, :-1].transpose(1, 2).float(), targets, ignore_index=IGNORE_INDEX,
                                 reduction="none")  # (B, L - 1), 0 where ignored
    counts = (targets != IGNORE_INDEX).sum(1)  # (B,)
    return token_loss.sum() / counts.sum().clamp(min=1), token_loss.sum(1) / counts.clamp(min=1)


def distillation(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """``T^2 * mean_t KL(softmax(z^T_t / T) || softmax(z^S_t / T))`` over matching ``(n, V)`` answer-position rows."""
    if student.shape[0] == 0:
        return student.sum() * 0.0
    log_s = F.log_softmax(student.float() / temperature, dim=-1)
    log_t = F.log_softmax(teacher.float() / temperature, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * temperature ** 2


def teacher_logits(peft_model, batch: dict) -> Tensor:
    """Full-sequence logits of the same backbone, uncompressed and with the adapter (LoRA + block) disabled."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    inputs = {k: v for k, v in batch.items() if k != "labels"}
    thinker = peft_model.get_base_model()
    trainable = [p for p in peft_model.parameters() if p.requires_grad]
    try:
        with torch.no_grad(), peft_model.disable_adapter():
            # the stock HF forward (the parent class) never calls the compressor: every token reaches the LLM
            return Qwen2_5OmniThinkerForConditionalGeneration.forward(thinker, **inputs).logits
    finally:  # PEFT re-enables requires_grad on every active adapter layer; restore exactly what trained before
        for p in peft_model.parameters():
            p.requires_grad_(False)
        for p in trainable:
            p.requires_grad_(True)


def answer_teacher_logits(teacher: Tensor, source_index: Tensor | None, labels_pruned: Tensor) -> Tensor:
    """Teacher rows aligned with :func:`answer_logits` of the student: position ``t`` of the pruned sequence is
    position ``source_index[t]`` of the full one (answers and the text before them are never dropped)."""
    if source_index is not None:
        index = source_index.clamp(min=0)[..., None].expand(-1, -1, teacher.shape[-1])
        teacher = teacher.gather(1, index)  # (B, L', V)
    return answer_logits(teacher, labels_pruned)
