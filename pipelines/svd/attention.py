"""Temporal self-attention processors for dual-directional sampling (SPEC C).

The forward branch computes its temporal attention map ``A = softmax(Q K^T / sqrt(d))``, shape
``(B*H*W*heads, F, F)``; the reverse branch does not compute its own map but uses the forward map of
the same layer rotated 180 degrees, ``flip(A, dims=(-2, -1))``, with its own V and output projection.

One :class:`DualAttentionState` is shared by the processors of all temporal self-attention layers
(``...temporal_transformer_blocks.0.attn1``, 16 in SVD) and says what the next UNet call does:

- ``forward``: plain attention with the forward weights (the UNet is the forward model).
- ``record``: as ``forward``, and the map of each layer is kept in ``state.maps`` (reference mode).
- ``inject``: reverse weights; the map is the recorded one, rotated (reference mode, second pass).
- ``reverse``: reverse weights with the layer's own Q/K (the reverse model run on its own).
- ``fused``: the batch holds the forward samples in its first half and the reverse samples in its
  second half; the map is computed once from the forward half and applied to both halves, rotated for
  the reverse one. The reverse half skips its own Q/K and nothing is kept across layers.

With ``state.rotate = False`` the reverse branch computes its own map instead of using the rotated
forward one (``fused``) or uses the recorded map unrotated (``inject``): with reverse = forward weights
that is plain two-run averaging ("TRF" in the paper).

Only ``to_v.weight`` and ``to_out.0.weight`` differ between the two models, so one UNet is held and the
reverse half goes through ``F.linear`` with the reverse tensors and the shared biases.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import Attention

TEMPORAL_SELF_ATTN_SUFFIX = "temporal_transformer_blocks.0.attn1"
# The two weights per temporal self-attention layer that the reverse-motion model changes.
REVERSE_PARAM_SUFFIXES = ("to_v.weight", "to_out.0.weight")
MODES = ("forward", "record", "inject", "reverse", "fused")


def temporal_attention_layers(unet: torch.nn.Module) -> list[str]:
    """Names of the temporal self-attention modules of a UNetSpatioTemporalConditionModel, sorted."""
    return sorted(n for n, m in unet.named_modules() if n.endswith(TEMPORAL_SELF_ATTN_SUFFIX))


def reverse_param_names(unet: torch.nn.Module) -> list[str]:
    """State-dict names of the weights the reverse model changes (32 in SVD: to_v and to_out.0)."""
    return [f"{layer}.{s}" for layer in temporal_attention_layers(unet) for s in REVERSE_PARAM_SUFFIXES]


@dataclass
class DualAttentionState:
    """What the temporal self-attention processors do in the next UNet call (see module docstring).

    reverse: the reverse tensors by state-dict name (``<layer>.to_v.weight``, ``<layer>.to_out.0.weight``);
        layers without an entry use the forward weights.
    maps: recorded maps by layer name, ``(B*H*W*heads, F, F)``, filled in ``record`` mode.
    """

    mode: str = "forward"
    rotate: bool = True
    reverse: dict[str, torch.Tensor] = field(default_factory=dict)
    maps: dict[str, torch.Tensor] = field(default_factory=dict)

    def set(self, mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"attention mode {mode!r}: expected one of {MODES}")
        self.mode = mode


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(N, F, heads*d) -> (N, heads, F, d)."""
    n, f, c = x.shape
    return x.view(n, f, heads, c // heads).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(N, heads, F, d) -> (N, F, heads*d)."""
    n, h, f, d = x.shape
    return x.transpose(1, 2).reshape(n, f, h * d)


def attention_map(attn: Attention, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """softmax(Q K^T * scale), computed in float32: (N, heads, F, d) x2 -> (N, heads, F, F)."""
    scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * attn.scale
    return scores.softmax(dim=-1).to(q.dtype)


class DualTemporalAttnProcessor:
    """Processor of one temporal self-attention layer; behaviour set by the shared state."""

    def __init__(self, name: str, state: DualAttentionState) -> None:
        self.name = name
        self.state = state

    # diffusers passes these keyword arguments to every processor.
    def __call__(
        self,
        attn: Attention,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """hidden_states: (B*H*W, F, C) -> (B*H*W, F, C)."""
        if hidden_states.ndim != 3 or encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError(f"{self.name}: expected temporal self-attention on (B*H*W, F, C) tokens")
        if attn.spatial_norm is not None or attn.group_norm is not None or attn.norm_q is not None:
            raise ValueError(f"{self.name}: unsupported attention layout (norms inside the attention)")
        mode = self.state.mode
        if mode in ("forward", "record"):
            out = self._single(attn, hidden_states, reverse=False, record=mode == "record")
        elif mode in ("inject", "reverse"):
            out = self._single(attn, hidden_states, reverse=True, inject=mode == "inject")
        else:
            out = self._fused(attn, hidden_states)
        if attn.residual_connection:
            out = out + hidden_states
        return out / attn.rescale_output_factor

    # -- weights ---------------------------------------------------------------------------------
    def _v(self, attn: Attention, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        w = self.state.reverse.get(f"{self.name}.to_v.weight") if reverse else None
        if w is None:
            return attn.to_v(x)
        return F.linear(x, w.to(x.dtype), None if attn.to_v.bias is None else attn.to_v.bias)

    def _o(self, attn: Attention, x: torch.Tensor, reverse: bool) -> torch.Tensor:
        w = self.state.reverse.get(f"{self.name}.to_out.0.weight") if reverse else None
        lin = attn.to_out[0]
        x = lin(x) if w is None else F.linear(x, w.to(x.dtype), lin.bias)
        return attn.to_out[1](x)  # dropout (identity in eval)

    # -- one branch per call ---------------------------------------------------------------------
    def _single(
        self, attn: Attention, x: torch.Tensor, reverse: bool, record: bool = False, inject: bool = False
    ) -> torch.Tensor:
        v = _heads(self._v(attn, x, reverse), attn.heads)
        if inject:
            ref = self.state.maps.get(self.name)
            if ref is None:
                raise RuntimeError(f"{self.name}: no recorded forward map to inject (run 'record' first)")
            if ref.shape[0] != v.shape[0] or ref.shape[-1] != v.shape[-2]:
                raise RuntimeError(
                    f"{self.name}: recorded map {tuple(ref.shape)} does not fit values {tuple(v.shape)}"
                )
            a = ref.flip(-2, -1) if self.state.rotate else ref
            out = torch.matmul(a.to(v.dtype), v)
        else:
            q = _heads(attn.to_q(x), attn.heads)
            k = _heads(attn.to_k(x), attn.heads)
            if record:
                a = attention_map(attn, q, k)
                self.state.maps[self.name] = a
                out = torch.matmul(a, v)
            else:
                out = F.scaled_dot_product_attention(q, k, v, scale=attn.scale)
        return self._o(attn, _merge(out), reverse)

    # -- both branches in one call ---------------------------------------------------------------
    def _fused(self, attn: Attention, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0] // 2
        if x.shape[0] != 2 * n:
            raise RuntimeError(f"{self.name}: fused mode needs an even batch (forward half, reverse half)")
        xf, xr = x[:n], x[n:]
        vf = _heads(self._v(attn, xf, False), attn.heads)
        vr = _heads(self._v(attn, xr, True), attn.heads)
        qf = _heads(attn.to_q(xf), attn.heads)
        kf = _heads(attn.to_k(xf), attn.heads)
        d = vf.shape[-1]
        if self.state.rotate:
            # flip(A) @ V == flip_F(A @ flip_F(V)): one attention call with both halves' values side by
            # side applies the forward map to the forward values and, rotated, to the reverse values,
            # and the map itself is never materialised.
            both = F.scaled_dot_product_attention(
                qf, kf, torch.cat([vf, vr.flip(-2)], dim=-1), scale=attn.scale
            )
            of, orv = both[..., :d], both[..., d:].flip(-2)
        else:
            qr = _heads(attn.to_q(xr), attn.heads)
            kr = _heads(attn.to_k(xr), attn.heads)
            o = F.scaled_dot_product_attention(
                torch.cat([qf, qr]), torch.cat([kf, kr]), torch.cat([vf, vr]), scale=attn.scale
            )
            of, orv = o[:n], o[n:]
        return torch.cat([self._o(attn, _merge(of), False), self._o(attn, _merge(orv), True)])


def install_dual_attention(unet: torch.nn.Module, state: DualAttentionState) -> list[str]:
    """Give every temporal self-attention layer of ``unet`` a :class:`DualTemporalAttnProcessor`.

    Other layers keep their processors. Returns the layer names.
    """
    layers = temporal_attention_layers(unet)
    if not layers:
        raise ValueError("the UNet has no temporal self-attention layers (not an SVD UNet?)")
    procs = {}
    for key, proc in unet.attn_processors.items():
        layer = key.removesuffix(".processor")
        procs[key] = DualTemporalAttnProcessor(layer, state) if layer in layers else proc
    unet.set_attn_processor(procs)
    return layers
