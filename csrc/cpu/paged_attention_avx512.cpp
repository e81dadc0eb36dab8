// The AVX-512 build of the CPU paged_attention kernel (see paged_attention_impl.h).
#define SPCT_ISA avx512
#include "paged_attention_impl.h"
