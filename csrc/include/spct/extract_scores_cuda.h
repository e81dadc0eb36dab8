// CUDA launchers of extract_scores. Device pointers and the stream come in as plain integers/pointers so this
// header needs neither the CUDA runtime nor pybind11; each launcher returns "" or the CUDA error text.
#pragma once

#include <cstdint>
#include <string>

namespace spct {
namespace cuda {

struct DeviceTokens {
  const void* ids;  // (N, T) int32 or int64, rows `row_stride` elements apart
  bool is_int64;
  int64_t rows, cols, row_stride;
  const int64_t* lengths;       // (N,)
  const uint8_t* table_bytes;   // vocabulary bytes
  const int64_t* table_offsets; // (vocab + 1,)
  int64_t vocab;
  bool strip_leading_space;
};

// row_bytes (N,): each row's text size. bad (1,) uint64, preset to UINT64_MAX: min of row * T + col over
// out-of-vocabulary tokens.
std::string launch_sizes(const DeviceTokens& tok, int64_t* row_bytes, unsigned long long* bad, void* stream);

struct DeviceParse {
  const int64_t* row_offsets;   // (N + 1,)
  uint8_t* text;                // (row_offsets[N],) written here
  const int64_t* num_responses; // (N,)
  int64_t n_max;
  double lo, hi;
  float* scores;                // (N, n_max)
  bool* valid;                  // (N,)
  int64_t* principle_span;      // (N, 2)
  int64_t* critique_span;       // (N, 2)
  int64_t* item_counts;         // (N,)
  int32_t* slow;                // (N,): 1 where a number needs the host's exact conversion
};

// Detokenizes each row into `text` and parses it (one thread per row, the same code as the CPU kernel).
std::string launch_parse(const DeviceTokens& tok, const DeviceParse& out, void* stream);

// Writes the principle items: name spans (P, 2) and weights (P,), row r's from item_starts[r].
std::string launch_items(const int64_t* row_offsets, const uint8_t* text, const int64_t* principle_span,
                         const int64_t* item_starts, int64_t rows, int64_t* item_spans, double* item_weights,
                         void* stream);

}  // namespace cuda
}  // namespace spct
