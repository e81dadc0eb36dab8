// The AVX2 + FMA build of the CPU paged_attention kernel (see paged_attention_impl.h).
#define SPCT_ISA avx2
#include "paged_attention_impl.h"
