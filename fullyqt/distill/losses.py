"""The distillation losses, as sums over real (non-padding) positions like fairseq's own losses,
so that fairseq's division by the token count and ``--update-freq`` treat them alike."""
import torch.nn.functional as F


def soft_target_loss(student_logits, teacher_logits, valid, temperature: float):
    """Sum over valid positions of KL(teacher || student) at ``temperature``, times T² (Hinton
    et al. 2015: keeps the gradient scale independent of T).  Logits: (..., vocab); valid: (...)."""
    t = float(temperature)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=-1)
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=-1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(-1)
    return kl.masked_fill(~valid, 0.0).sum() * (t * t)


def state_mse(student, teacher, valid):
    """Squared error per position averaged over features, then over the valid positions (one
    pair of hidden states, (..., dim) each; ``valid`` (...))."""
    per_position = (student.float() - teacher.float()).pow(2).mean(-1)
    return per_position.masked_fill(~valid, 0.0).sum() / valid.sum().clamp(min=1)


def mixed_loss(cross_entropy, soft_targets, hidden, kd_weight: float, hidden_weight: float):
    """(1 − α)·label-smoothed CE + α·soft-target KD + β·hidden-state MSE."""
    loss = (1.0 - kd_weight) * cross_entropy + kd_weight * soft_targets
    if hidden is not None:
        loss = loss + hidden_weight * hidden
    return loss
