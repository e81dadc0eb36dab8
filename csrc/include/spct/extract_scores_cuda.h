// CUDA launchers of extract_scores. Device pointers and the stream come in as plain integers/pointers so this
// header needs neither the CUDA runtime nor pybind11; each launcher returns "" or the CUDA error text.
// The launchers check nothing: the Python op checked the arguments, and the sizes pass reports token ids
// outside the vocabulary (the one data value the kernels must check, since they index the table with it).
#pragma once

#include <cstdint>
#include <string>

namespace spct {
namespace cuda {

struct DeviceTokens {
  const void* ids;  // (N, T) int32 or int64, rows `row_stride` elements apart
  bool is_int64;
  int64_t rows, cols, row_stride;
  const int64_t* lengths;        // (N,), each in [0, T]
  const uint8_t* table_bytes;    // vocabulary bytes
  const int64_t* table_offsets;  // (vocab + 1,), from 0 to len(table_bytes), never decreasing
  int64_t vocab;
  bool strip_leading_space;
};

// row_bytes (N,): each row's text size. bad (1,) uint64, preset to UINT64_MAX: min of row * T + col over
// out-of-vocabulary tokens (such a row's size is 0).
std::string extract_scores_sizes(const DeviceTokens& tok, int64_t* row_bytes, unsigned long long* bad,
                                 void* stream);

struct DeviceParse {
  const int64_t* row_offsets;    // (N + 1,)
  uint8_t* text;                 // (row_offsets[N],) written here
  const int64_t* num_responses;  // (N,), each >= 1
  int64_t n_max;                 // max(num_responses)
  double lo, hi;
  float* scores;            // (N, n_max)
  bool* valid;              // (N,)
  int64_t* principle_span;  // (N, 2)
  int64_t* critique_span;   // (N, 2)
  int64_t* item_counts;     // (N,)
  int32_t* slow;            // (N,): 1 where a number needs the host's exact conversion
};

// Detokenizes each row into `text` and parses it (one thread per row, the same code as the CPU kernel).
std::string extract_scores_parse(const DeviceTokens& tok, const DeviceParse& out, void* stream);

struct DeviceItems {
  int64_t rows;
  const int64_t* row_offsets;     // (N + 1,)
  const uint8_t* text;            // (row_offsets[N],)
  const int64_t* principle_span;  // (N, 2)
  const int64_t* item_starts;     // (N,): row r's first item
  int64_t* item_spans;            // (P, 2) written here
  double* item_weights;           // (P,) written here
};

// Writes the principle items: name spans and weights, row r's from item_starts[r].
std::string extract_scores_items(const DeviceItems& items, void* stream);

}  // namespace cuda
}  // namespace spct
