// The AMX tile configuration (LDTILECFG's 64-byte operand, palette 1), shared by the AMX kernels
// (linear_amx.cpp, paged_attention_amx.h): each fills colsb and rows for the tiles it uses.
#pragma once

#include <cstdint>

namespace spct {
namespace cpu {

struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};  // bytes per row of tile t
  uint8_t rows[16] = {};    // rows of tile t
};

}  // namespace cpu
}  // namespace spct
