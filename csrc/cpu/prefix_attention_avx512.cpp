// The AVX-512 build of the CPU prefix_attention kernel (see prefix_attention_impl.h).
#define SPCT_ISA avx512
#include "prefix_attention_impl.h"
