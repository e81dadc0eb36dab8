// PagedAttentionLayout: the index arrays and sizes shared by the paged_attention calls of one step (the tensors are
// filled in per call). Bound in paged_attention.cpp; decoder.cpp takes one too.
#pragma once

#include "spct/paged_attention.h"

namespace spct_bind {

struct PagedAttentionLayout {
  spct::attn::PagedAttention a{};
};

}  // namespace spct_bind
