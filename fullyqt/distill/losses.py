"""The distillation losses, as sums over real (non-padding) positions like fairseq's own losses,
so that fairseq's division by the token count and ``--update-freq`` treat them alike."""
import torch


class _SoftTargetKL(torch.autograd.Function):
    """T²·Σ_rows w·KL(softmax(t/T) || softmax(s/T)) over (rows, vocab) logits, with its gradient
    T·w·(softmax(s/T) − softmax(t/T)) kept from the forward pass.  Each row's KL is
    p_t·(t − s)/T − lse(t/T) + lse(s/T), and lse(x) = max(x) − log(max(softmax(x))): two softmaxes
    and no log-probability tensors, a third of autograd's passes over the vocabulary."""

    @staticmethod
    def forward(ctx, student, teacher, valid, temperature: float):
        if temperature != 1.0:
            student, teacher = student / temperature, teacher / temperature
        p_student = torch.softmax(student, -1)
        p_teacher = torch.softmax(teacher, -1)
        cross = (_row_dot(p_teacher, teacher) - _row_dot(p_teacher, student)
                 - _log_sum_exp(teacher, p_teacher) + _log_sum_exp(student, p_student))
        weight = valid.to(cross.dtype)
        ctx.save_for_backward(p_student.sub_(p_teacher), weight)
        ctx.temperature = temperature
        return cross.masked_fill(~valid, 0.0).sum() * (temperature * temperature)

    @staticmethod
    def backward(ctx, grad):
        difference, weight = ctx.saved_tensors
        return difference * (weight * (grad * ctx.temperature)).unsqueeze(-1), None, None, None


def _row_dot(a, b):
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)


def _log_sum_exp(logits, probs):
    """log Σ exp(x) per row from its softmax: at the row's largest logit p = exp(x_max − lse)."""
    return logits.amax(-1) - probs.amax(-1).log()


def soft_target_loss(student_logits, teacher_logits, valid, temperature: float):
    """Sum over valid positions of KL(teacher || student) at ``temperature``, times T² (Hinton
    et al. 2015: keeps the gradient scale independent of T).  Logits: (..., vocab); valid: (...).
    The teacher's logits get no gradient."""
    vocab = student_logits.size(-1)
    return _SoftTargetKL.apply(student_logits.float().reshape(-1, vocab),
                               teacher_logits.detach().float().reshape(-1, vocab),
                               valid.reshape(-1), float(temperature))


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
