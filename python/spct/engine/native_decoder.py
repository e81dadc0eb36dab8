"""The layer loop of a bfloat16 CPU step in one native call (spct/decoder.h, csrc/cpu/decoder.cpp).

`LlamaRunner.forward_paged` runs each layer as 9 calls: the norms, the four matrix products, RoPE with the KV
write, the attention and SiLU (or Gemma's tanh GELU) times up, each through a Python wrapper that checks its
arguments and allocates its output (Qwen3 and Gemma 3 add a norm over each q and k head, Gemma norms the attention's
and the MLP's outputs). Each layer takes its own RoPE table (Gemma 3's differ by layer type) and the attention layout
of its window size (sliding-window and global layers: one layout each per step). The native loop makes the same
kernel calls in the same order on the same values, so every row gets the same bits (tested), with the arguments
checked once per step and the work buffers kept from one step to the next.
It is used where every layer's weights run the native bf16 linear without padding (`NativeDecoder.of` answers None
otherwise, and the Python loop runs). SPCT_NATIVE_DECODER=0 turns it off.
"""

from __future__ import annotations

import os

import torch

from spct.ops import dispatch

__all__ = ["NativeDecoder"]

LINEARS = ("qkv", "o", "gate_up", "down")
# q_norm, k_norm (Qwen3, Gemma 3), attn_out_norm, mlp_out_norm (Gemma's sandwich): only where the layer has them
NORMS = ("in_norm", "post_norm", "q_norm", "k_norm", "attn_out_norm", "mlp_out_norm")


class NativeDecoder:
    """A runner's weights by address for spct._C.decoder_forward_bf16; the runner keeps the tensors alive."""

    def __init__(self, runner):
        c, lib = runner.config, dispatch.native()
        layers = []
        for layer in runner.layers:
            addresses = []
            for name in LINEARS:
                m = layer[name]
                addresses += [m.packed.data_ptr(), 0 if m.bias is None else m.bias.data_ptr()]
            norms = [layer.get(name) for name in NORMS]
            layers.append(addresses + [0 if t is None else t.data_ptr() for t in norms]
                          + [layer["cos"].data_ptr(), layer["sin"].data_ptr()])
        self._lib, self._hidden = lib, c.hidden_size
        self._windows = sorted({layer["window"] for layer in runner.layers})  # a step's layouts, in this order
        layouts = [self._windows.index(layer["window"]) for layer in runner.layers]
        self._decoder = lib.Decoder(layers, layouts, runner.norm.data_ptr(), runner.cos.shape[0], c.hidden_size,
                                    c.num_heads, c.num_kv_heads, c.head_dim, c.intermediate_size,
                                    float(c.rms_norm_eps), c.activation == "gelu_tanh", runner.layers[0]["qkv"].kernel)
        self._shape = (c.num_heads, c.head_dim)

    @classmethod
    def of(cls, runner) -> NativeDecoder | None:
        """The native loop for this runner, or None where it does not apply (not bf16 on the CPU, not a Llama, Qwen3
        or Gemma layer (`LlamaRunner.plain`), a weight that is not the native linear's or is padded, norms or tables
        not contiguous bf16 or tables of different lengths, SPCT_NATIVE_DECODER=0)."""
        if os.environ.get("SPCT_NATIVE_DECODER", "1") == "0" or runner.dtype != torch.bfloat16:
            return None
        if runner.device.type != "cpu" or not runner.plain:
            return None
        for layer in runner.layers:
            for name in LINEARS:
                m = layer[name]
                if not m.native or (m.n, m.k) != (m.out_features, m.in_features):
                    return None
        if not hasattr(dispatch.native(), "Decoder"):  # the native linear is there, so is spct._C
            return None
        names = (*NORMS, "cos", "sin")
        tensors = [runner.norm, *(layer[n] for layer in runner.layers for n in names if n in layer)]
        if not all(t.dtype == torch.bfloat16 and t.is_contiguous() for t in tensors):
            return None
        if any(layer[n].shape != runner.cos.shape for layer in runner.layers for n in ("cos", "sin")):
            return None
        return cls(runner)

    def forward(self, plans: dict, x: torch.Tensor, positions: torch.Tensor, slots: torch.Tensor,
                kv: torch.Tensor) -> torch.Tensor | None:
        """x (R, H): the rows' embeddings, their residual stream after (in place); positions, slots (R,) int64;
        kv: (layers, 2, N, B, Hkv, D); plans: the step's paged_attention Plans by window size (0: the global layers'),
        one for each window among the layers -> the final norm of the residual stream (R, H). None (nothing done)
        where a plan's layout is not the C++ kernel's."""
        if not (x.is_contiguous() and kv.is_contiguous() and kv.dtype == torch.bfloat16):
            return None
        rows = x.shape[0]
        q = torch.empty((rows, *self._shape), dtype=torch.bfloat16)
        layouts = [plans[w].cpu_layout(q, kv[0, 0]) for w in self._windows]
        if any(layout is None for layout in layouts):
            return None
        out = torch.empty_like(x)
        self._lib.decoder_forward_bf16(self._decoder, layouts, x.data_ptr(), rows, positions.data_ptr(),
                                       slots.data_ptr(), kv.data_ptr(), kv.shape[2], kv.shape[3], out.data_ptr())
        return out
