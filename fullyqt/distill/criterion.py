"""``--criterion fullyqt_distill``: label-smoothed cross entropy mixed with a teacher's soft
targets and, optionally, its hidden states.

loss = (1 − α)·CE + α·T²·KL(teacher_T || student_T) + β·MSE(hidden states), each summed over
real target tokens (the MSE: its per-token mean times the sample size) so that fairseq's
normalisation and ``--update-freq`` apply unchanged.  Hidden states of different widths meet
through one learned projection per stack; it lives in the criterion (trained, saved for
resume, never part of the student model or its export).
"""
import math
import time

import torch
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import LabelSmoothedCrossEntropyCriterion
from fairseq.logging import metrics
from torch import nn

from .layer_map import STACKS, resolve
from .losses import mixed_loss, soft_target_loss, state_mse
from .options import CRITERION, add_distill_args
from .states import forward_with_states
from .teacher import DistillError, Teacher, load_teacher


def _width_and_depth(args, stack):
    return (getattr(args, f"{stack}_embed_dim", None), getattr(args, f"{stack}_layers", None))


@register_criterion(CRITERION)
class DistillationCriterion(LabelSmoothedCrossEntropyCriterion):
    @staticmethod
    def add_args(parser):
        add_distill_args(parser)

    @classmethod
    def build_criterion(cls, cfg, task):
        if not getattr(cfg, "teacher_path", None):
            raise DistillError(f"--criterion {CRITERION} needs --teacher-path CKPT")
        return cls(task, cfg)

    def __init__(self, task, args):
        super().__init__(task, getattr(args, "sentence_avg", False),
                         getattr(args, "label_smoothing", 0.0),
                         getattr(args, "ignore_prefix_size", 0),
                         getattr(args, "report_accuracy", False))
        self.kd_weight = float(getattr(args, "kd_weight", 0.5))
        self.temperature = float(getattr(args, "kd_temperature", 1.0))
        self.hidden_weight = float(getattr(args, "kd_hidden_weight", 0.0))
        self.layer_map = getattr(args, "kd_layer_map", None) or (None, None)
        model = load_teacher(args.teacher_path, task)
        self.teacher = Teacher(model)  # a plain object, so not a submodule: see Teacher
        self.projections = nn.ModuleDict()
        self._pairs = {}
        if self.hidden_weight > 0:
            self._plan_hidden(args, model.args if hasattr(model, "args") else model.cfg)
        self._last_call = None

    def _plan_hidden(self, args, teacher_args):
        """Layer pairs and projections from the configurations (the optimizer is built before
        the first batch); the first batch checks them against the real states."""
        for i, stack in enumerate(STACKS):
            width, depth = _width_and_depth(args, stack)
            t_width, t_depth = _width_and_depth(teacher_args, stack)
            if depth is not None and t_depth is not None:
                self._pairs[stack] = resolve(stack, self.layer_map[i], depth, t_depth)
            if width and t_width and width != t_width:
                self.projections[stack] = nn.Linear(width, t_width)

    def forward(self, model, sample, reduce=True):
        if not reduce:
            raise ValueError(f"{CRITERION} computes summed losses only (reduce=True)")
        net_input, with_states = sample["net_input"], self.hidden_weight > 0
        student_out, s_enc, s_dec = forward_with_states(model, net_input, with_states)
        cross_entropy, nll_loss = self.compute_loss(model, student_out, sample)

        teacher, started = self.teacher, time.perf_counter()
        teacher.follow(next(model.parameters()))
        teacher_out, t_enc, t_dec = teacher(net_input, with_states)
        if student_out[0].is_cuda:
            torch.cuda.synchronize(student_out[0].device)
        teacher_seconds = time.perf_counter() - started

        target = full_target = model.get_targets(sample, student_out)
        s_logits, t_logits = student_out[0], teacher_out[0]
        if s_logits.shape != t_logits.shape:
            raise DistillError(f"teacher output {tuple(t_logits.shape)} and student output "
                               f"{tuple(s_logits.shape)} differ")
        n = self.ignore_prefix_size
        if n > 0:
            s_logits, t_logits, target = s_logits[:, n:], t_logits[:, n:], target[:, n:]
        soft = soft_target_loss(s_logits, t_logits, target.ne(self.padding_idx),
                                self.temperature)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        hidden = None
        if with_states:
            hidden = self._hidden_loss(
                {"encoder": (s_enc, t_enc, net_input["src_tokens"]),
                 "decoder": (s_dec, t_dec, full_target)})
        loss = mixed_loss(cross_entropy, soft, None if hidden is None else hidden * sample_size,
                          self.kd_weight, self.hidden_weight)
        logging_output = {
            "loss": loss.data, "nll_loss": nll_loss.data, "kd_loss": soft.data,
            "ntokens": sample["ntokens"], "nsentences": sample["target"].size(0),
            "sample_size": sample_size,
        }
        if hidden is not None:
            logging_output["hidden_loss"] = hidden.data * sample_size
        logging_output.update(self._timing(model.training, teacher_seconds))
        if self.report_accuracy:
            n_correct, total = self.compute_accuracy(model, student_out, sample)
            logging_output["n_correct"], logging_output["total"] = n_correct.item(), total.item()
        return loss, sample_size, logging_output

    def _hidden_loss(self, stacks):
        """Mean over every (student, teacher) state pair of both stacks of the per-token MSE."""
        terms = []
        for stack, (student, teacher, tokens) in stacks.items():
            pairs = self._pairs.get(stack) or resolve(
                stack, self.layer_map[STACKS.index(stack)], len(student) - 1, len(teacher) - 1)
            if pairs[-1][0] != len(student) - 1 or max(t for _, t in pairs) >= len(teacher):
                raise DistillError(f"--kd-layer-map: the {stack} has {len(student) - 1} "
                                   f"student and {len(teacher) - 1} teacher layers, which the "
                                   f"configured pairs {pairs} do not match")
            project = self.projections[stack] if stack in self.projections else None
            valid = tokens.ne(self.padding_idx).t()
            for s, t in pairs:
                s_state = project(student[s]) if project is not None else student[s]
                if s_state.shape != teacher[t].shape:
                    raise DistillError(f"{stack} hidden states: student {tuple(student[s].shape)}"
                                       f" vs teacher {tuple(teacher[t].shape)} (time, batch, "
                                       "width) cannot be compared")
                terms.append(state_mse(s_state, teacher[t], valid))
        return torch.stack(terms).mean()

    def _timing(self, training: bool, teacher_seconds: float):
        """Teacher time and the wall time since the previous training batch (the whole update
        cycle), summed over batches into the logged teacher share."""
        now, last = time.perf_counter(), self._last_call
        self._last_call = now if training else None
        if not training or last is None:
            return {}
        return {"teacher_seconds": teacher_seconds, "step_seconds": now - last}

    @classmethod
    def reduce_metrics(cls, logging_outputs) -> None:
        super().reduce_metrics(logging_outputs)
        total = {key: sum(log.get(key, 0) for log in logging_outputs)
                 for key in ("kd_loss", "hidden_loss", "sample_size", "teacher_seconds",
                             "step_seconds")}
        sample_size = total["sample_size"]
        metrics.log_scalar("kd_loss", total["kd_loss"] / sample_size / math.log(2), sample_size,
                           round=3)
        if any("hidden_loss" in log for log in logging_outputs):
            metrics.log_scalar("hidden_loss", total["hidden_loss"] / sample_size, sample_size,
                               round=4)
        if total["step_seconds"] > 0:
            metrics.log_scalar_sum("_teacher_seconds", total["teacher_seconds"])
            metrics.log_scalar_sum("_step_seconds", total["step_seconds"])
            metrics.log_derived("teacher_share", _teacher_share)

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True


def _teacher_share(meters):
    """Teacher seconds over update seconds (sums are tensors once ranks have all-reduced them)."""
    step = float(meters["_step_seconds"].sum) if "_step_seconds" in meters else 0.0
    return round(float(meters["_teacher_seconds"].sum) / step, 3) if step > 0 else 0.0
