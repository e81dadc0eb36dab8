"""Triton kernels, one module per op; run on the CPU only under TRITON_INTERPRET=1 (tests, small shapes)."""
