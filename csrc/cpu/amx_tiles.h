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

// LDTILECFG on cfg, after an empty asm that reads cfg from memory. Without it GCC 12 (-O3, LTO) dropped the stores
// that fill colsb and rows in an outlined amx_configure_narrow (paged_attention_amx.h): LDTILECFG then read palette
// 1 and no tiles, and the first tile instruction raised SIGILL.
#define tile_loadconfig(cfg)                   \
  do {                                         \
    asm volatile("" : : "m"(cfg) : "memory");  \
    _tile_loadconfig(&(cfg));                  \
  } while (0)

}  // namespace cpu
}  // namespace spct
