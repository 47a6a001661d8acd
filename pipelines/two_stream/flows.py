"""Optical flow for the two-stream model's deformable writes (SPEC A, "Flow used by the model").

Used by the video protocol (:mod:`.video`) and by training (:mod:`.train`): target -> keyframe and
keyframe -> target flow, both filled inside the *target's* mask, and the forward-backward error
channel, as the reference's flow module computes them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from ..errors import PipelineError
from ..flow import FlowEstimator, fill_flow_in_mask
from ..ops import resize_flow, warp


def model_flows(
    target: torch.Tensor,
    keys: torch.Tensor,
    target_mask: torch.Tensor,
    estimator: FlowEstimator | None,
    flow_size: tuple[int, int] | None = (256, 256),
    given: Sequence[tuple[torch.Tensor, torch.Tensor] | None] | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flows and flow errors for the deformable writes, at the working resolution.

    target ``(h, w, 3)``; keys ``(K, h, w, 3)``; target_mask ``(h, w)`` 1 = hole; ``given[i]`` an
    optional precomputed pair (flow target -> key i, flow key i -> target), each ``(2, h', w')`` in
    pixels of h' x w' (resized here). Returns flows ``(K, 2, h, w)`` target -> key and errors
    ``(K, 1, h, w)``, float32 on CPU.
    """
    k = int(keys.shape[0])
    h, w = int(target.shape[0]), int(target.shape[1])
    if k == 0:
        return torch.zeros(0, 2, h, w), torch.zeros(0, 1, h, w)
    f_tk = torch.empty(k, 2, h, w)
    f_kt = torch.empty(k, 2, h, w)
    todo = [i for i in range(k) if given is None or given[i] is None]
    for i in range(k):
        if i not in todo:
            a, b = given[i]  # type: ignore[index, misc]
            f_tk[i] = resize_flow(a[None].float(), (h, w))[0]
            f_kt[i] = resize_flow(b[None].float(), (h, w))[0]
    if todo:
        if estimator is None:
            raise PipelineError("flow: no flow for some keyframe pairs and no flow estimator given")
        a = target[None].expand(len(todo), -1, -1, -1)
        b = keys[todo]
        pair = estimator(torch.cat((a, b)), torch.cat((b, a))).float().cpu()  # one batch (RAFT)
        f_tk[todo], f_kt[todo] = pair[: len(todo)], pair[len(todo) :]
    # Both directions are filled in the target's mask, as the reference's flow module.
    hole = target_mask.float()[None]
    f_tk = fill_flow_in_mask(f_tk, hole, seed=seed)
    f_kt = fill_flow_in_mask(f_kt, hole, seed=seed)
    fh, fw = flow_size or (h, w)
    err = (f_tk + warp(f_kt, f_tk)).abs()
    err = err * torch.tensor([w / fw, h / fh]).view(1, 2, 1, 1)  # the reference's scaling
    return f_tk, err.mean(dim=1, keepdim=True)
