// The AMX build of the CPU paged_attention kernel (paged_attention_impl.h with paged_attention_amx.h): bfloat16 only,
// chosen by the caller (the layout's amx flag) where the CPU has AMX-BF16 and the OS granted the tile registers.
#define SPCT_ISA amx
#define SPCT_AMX 1
#include "paged_attention_impl.h"
