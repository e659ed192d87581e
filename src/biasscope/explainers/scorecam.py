"""Score-CAM (Wang et al. 2020): each activation map, upsampled to the input and min-max scaled to
``[0, 1]``, masks the input; the target's logit on each masked input scores its channel, and the
softmax of those scores over channels weights the maps (pytorch-grad-cam's formulation: raw logits,
softmax over channels, bilinear upsampling with aligned corners, ``+1e-8`` in the scaling).

No gradients; ``K`` forward passes per image (one per channel), run in batches of the adapter's
measured forward batch size: the slow one of the CAM family.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._cam import CamExplainer
from .registry import register

__all__ = ["ScoreCAM"]


@register(aliases=("score_cam",))
class ScoreCAM(CamExplainer):
    name = "scorecam"
    order = 60
    label = "Score-CAM"
    description = "Channels weighted by the class score of the input masked with each upsampled map."
    uses_gradients = False
    slow = True

    @torch.no_grad()
    def cam_map(self, acts: torch.Tensor, grads: torch.Tensor | None, x: torch.Tensor, targets: torch.Tensor):
        adapter = self.adapter
        n, k = acts.shape[:2]
        up = F.interpolate(acts.float(), size=x.shape[-2:], mode="bilinear", align_corners=True)
        flat = up.reshape(n, k, -1)
        lo, hi = flat.amin(-1)[:, :, None, None], flat.amax(-1)[:, :, None, None]
        up = (up - lo) / (hi - lo + 1e-8)
        bs = adapter.batch_size("forward", work=n * k)
        weights = torch.empty(n, k)
        x = x.to(adapter.device)
        for i in range(n):
            scores = []
            for j in range(0, k, bs):
                masked = x[i : i + 1] * up[i, j : j + bs, None].to(x.device)  # (b, 3, S, S)
                logits = adapter.logits(masked)
                scores.append(logits[:, int(targets[i])].float().cpu())
                start, width = self._span
                self.report(start + width * (i + min(j + bs, k) / k) / n)
            weights[i] = torch.softmax(torch.cat(scores), dim=0)
        return torch.relu((weights.to(acts.device, acts.dtype)[:, :, None, None] * acts).sum(1))
