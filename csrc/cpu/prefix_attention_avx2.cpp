// The AVX2 + FMA build of the CPU prefix_attention kernel (see prefix_attention_impl.h).
#define SPCT_ISA avx2
#include "prefix_attention_impl.h"
