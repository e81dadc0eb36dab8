"""linear: y = x W^T (+ b) for the engine's runner, with a native bfloat16 kernel for x86-64 CPUs.

Decoding multiplies a handful of rows (one per live sample) by every weight matrix each step; torch's bf16 matmul
is far from the memory and dot-product limits there (see csrc/cpu/linear.cpp). `Linear` packs a bf16 weight
once into the kernel's layout and runs it for any number of rows; elsewhere (float32, other CPUs, CUDA) it is
`torch.nn.functional.linear`, which is also the reference the kernel is tested against.

Three builds of the kernel: AMX tiles where the CPU has them (csrc/cpu/linear_amx.cpp), else AVX-512 BF16 dot
products (csrc/cpu/linear.cpp), else float32 FMAs on AVX2 (csrc/cpu/linear_avx2.cpp). Each reads the weight packed
in pairs along K for 16 outputs at a time (a block); the AVX-512 BF16 build has the blocks grouped by 4, a group's
pairs one after another (`GROUP`, spct/linear.h), so that a thread streams its share. One is chosen per process
(`kernel_name`) and runs for every M, because they sum in different orders and a row's bits must not change with the
number of rows.

Checks: this wrapper decides when the kernel runs (a bf16 weight on a CPU with one of the builds, a bf16 CPU input),
checks x's shape (M, K) and builds what the kernel needs (the weight padded to N a multiple of 16 and K even, then
packed; x padded to K, contiguous); the bindings only marshal; the kernel reads no index values and checks nothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from spct.ops import dispatch

__all__ = ["KERNELS", "Linear", "kernel_name", "native_bf16_available", "supported_kernels"]

KERNELS = ("amx", "avx512bf16", "avx2")
GROUP = 4  # blocks of 16 outputs per group of the AVX-512 BF16 build's grouped layout


def supported_kernels(device: torch.device = torch.device("cpu")) -> tuple[str, ...]:
    """The native builds a bf16 `Linear` on `device` can run, fastest first (empty: it runs torch)."""
    device = torch.device(device)
    if device.type != "cpu" or dispatch.pick("linear", device) != "native":
        return ()
    lib = dispatch.native()
    have = {"amx": lib.linear_bf16_amx_supported(), "avx512bf16": lib.linear_bf16_supported(),
            "avx2": getattr(lib, "linear_bf16_avx2_supported", lambda: False)()}
    return tuple(name for name in KERNELS if have[name])


def native_bf16_available(device: torch.device) -> bool:
    """Whether a bf16 `Linear` on `device` runs a native kernel: an x86-64 CPU with AVX2 and spct._C built."""
    return bool(supported_kernels(device))


def kernel_name(device: torch.device = torch.device("cpu")) -> str | None:
    """The native kernel a bf16 `Linear` on `device` runs: "amx" where the CPU has AMX-BF16, else "avx512bf16"
    where it has AVX-512 BF16, else "avx2"; None where it runs torch."""
    kernels = supported_kernels(device)
    return kernels[0] if kernels else None


class Linear:
    """weight: (N, K), bias: (N,) or None. __call__(x: (M, K)) -> (M, N) in the weight's dtype. kernel: one of
    `KERNELS` forces that native build (tests and benches; this CPU must run it); None takes `kernel_name`."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, kernel: str | None = None):
        self.out_features, self.in_features = weight.shape
        self.native = weight.dtype == torch.bfloat16 and native_bf16_available(weight.device)
        if kernel is not None and kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS} or None, got {kernel!r}")
        if kernel is not None and not (self.native and kernel in supported_kernels(weight.device)):
            cpu = {"amx": "AMX-BF16", "avx512bf16": "AVX-512 BF16", "avx2": "AVX2 and FMA"}[kernel]
            raise ValueError(f"kernel {kernel!r} needs a bfloat16 CPU weight and a CPU with {cpu}")
        if not self.native:
            self.weight, self.bias = weight, bias
            return
        self.kernel = kernel or kernel_name(weight.device)
        n, k = weight.shape
        n_pad, k_pad = -n % 16, -k % 32
        w = F.pad(weight, (0, k_pad, 0, n_pad))  # zero rows and columns: N a multiple of 16, K of 32 (an AMX tile)
        self.n, self.k = n + n_pad, k + k_pad
        self.packed = _pack(w, self.kernel == "avx512bf16")
        self.bias = None if bias is None else F.pad(bias, (0, n_pad)).contiguous()
        self.weight = None
        self._lib = dispatch.native()
        self._packed = self._lib.LinearBF16Weight(
            packed=self.packed.data_ptr(), bias=0 if self.bias is None else self.bias.data_ptr(), n=self.n, k=self.k)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if not self.native or x.dtype != torch.bfloat16 or x.device.type != "cpu":
            weight = self.weight if self.weight is not None else self.unpacked()
            return F.linear(x, weight, self.bias if self.weight is not None else self._bias())
        if x.dim() != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x must have shape (M, K = {self.in_features}), got {tuple(x.shape)}")
        rows = x.shape[0]
        x = x.contiguous() if self.k == self.in_features else F.pad(x, (0, self.k - self.in_features)).contiguous()
        y = torch.empty((rows, self.n), dtype=torch.bfloat16)
        self._lib.linear_bf16(self._packed, x.data_ptr(), rows, y.data_ptr(), self.kernel)
        return y if self.n == self.out_features else y[:, : self.out_features]

    def unpacked(self) -> torch.Tensor:
        """The (N, K) weight back from the packed layout."""
        w = _unpack(self.packed, self.n, self.k, self.kernel == "avx512bf16")
        return w[: self.out_features, : self.in_features]

    def _bias(self):
        return None if self.bias is None else self.bias[: self.out_features]


def _pack(w: torch.Tensor, grouped: bool) -> torch.Tensor:
    """w (N, K), N a multiple of 16 and K even -> packed (spct/linear.h): blocked (N/16, K/2, 16, 2), or grouped
    (the same elements, flat: the full groups of GROUP blocks, then the rest as one group)."""
    n, k = w.shape
    blocks = w.view(n // 16, 16, k // 2, 2)
    if not grouped:  # (N/16, 16, K/2, 2) -> (N/16, K/2, 16, 2)
        return blocks.permute(0, 2, 1, 3).contiguous()
    full = n // 16 // GROUP * GROUP
    # a group (blocks, 16, K/2, 2) -> (K/2, blocks, 16, 2)
    groups = blocks[:full].view(full // GROUP, GROUP, 16, k // 2, 2).permute(0, 3, 1, 2, 4).reshape(-1)
    return torch.cat([groups, blocks[full:].permute(2, 0, 1, 3).reshape(-1)])


def _unpack(packed: torch.Tensor, n: int, k: int, grouped: bool) -> torch.Tensor:
    """_pack's inverse: the (N, K) weight."""
    if not grouped:
        return packed.permute(0, 2, 1, 3).reshape(n, k)
    full = n // 16 // GROUP * GROUP
    groups, rest = packed[: full * 16 * k], packed[full * 16 * k:]
    groups = groups.view(full // GROUP, k // 2, GROUP, 16, 2).permute(0, 2, 3, 1, 4).reshape(full * 16, k)
    rest = rest.view(k // 2, n // 16 - full, 16, 2).permute(1, 2, 0, 3).reshape(n - full * 16, k)
    return torch.cat([groups, rest])
