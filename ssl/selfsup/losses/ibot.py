"""iBOT's masked patch-token self-distillation (docs/methods/ibot.md)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def masked_patch_loss(student_logits: Sequence[torch.Tensor], teacher_probs: Sequence[torch.Tensor],
                      masks: Sequence[torch.Tensor], student_temp: float = 0.1) -> torch.Tensor:
    """The student predicts, at each masked patch of a global crop, the teacher's target at that patch of the
    same crop seen unmasked (never another crop's).

    Per global crop g: ``masks[g]`` (B, h, w), 1 = masked; ``student_logits[g]`` and ``teacher_probs[g]`` (M, K),
    one row per masked patch in the order of ``masks[g].flatten(1).nonzero()`` (image by image, row-major):
    the student's patch logits from the masked crop and the teacher's targets from the unmasked one (iBOT:
    centred with the patch centre and sharpened). With s = log_softmax(student_logits / student_temp), in
    float32::

        loss = mean_g mean_b [ sum_{n masked in (g, b)} -sum_k t[g,b,n,k] s[g,b,n,k] / max(#masked(g, b), 1) ]

    An image without a masked patch counts 0 in its batch mean. This rank's images only: DDP's gradient
    averaging makes it the global mean.
    """
    with torch.autocast(student_logits[0].device.type, enabled=False):
        total = student_logits[0].new_zeros((), dtype=torch.float32)
        for s, t, m in zip(student_logits, teacher_probs, masks, strict=True):
            m = m.flatten(1).bool()
            share = (1.0 / m.sum(dim=1).clamp(min=1)).unsqueeze(1).expand_as(m)[m]  # 1 / #masked of each row's image
            cross_entropy = -(t.float() * F.log_softmax(s.float() / student_temp, dim=-1)).sum(dim=-1)
            total = total + (cross_entropy * share).sum() / len(m)
        return total / len(student_logits)
