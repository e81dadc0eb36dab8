// The AVX-512 BF16 build of the CPU paged_attention kernel (paged_attention_impl.h with paged_attention_dpbf16.h):
// bfloat16 with head_dim a multiple of 32, chosen by the caller (the layout's dpbf16 flag) where the CPU has
// AVX-512 BF16 and no AMX; other shapes in this build run the vector kernel.
#define SPCT_ISA avx512bf16
#define SPCT_DPBF16 1
#include "paged_attention_impl.h"
