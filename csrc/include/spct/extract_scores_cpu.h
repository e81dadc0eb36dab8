// CPU launcher of extract_scores: detokenize token ids with a byte table, then parse every row (OpenMP over
// rows). Raw pointers and sizes only; the bindings own the buffers. Nothing here checks arguments (the Python op
// did: lengths in [0, T], num_responses >= 1, a well-formed table); the detokenizer checks the token ids it reads.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "spct/extract_scores.h"

namespace spct {
namespace cpu {

// Vocabulary as bytes: token t is bytes[offsets[t], offsets[t + 1]).
struct TokenTable {
  const uint8_t* bytes;
  const int64_t* offsets;  // (vocab + 1,)
  int64_t vocab;
  bool strip_leading_space;  // drop one leading ' ' of each row (SentencePiece-style decoders)
};

// Token ids (N, T) with row stride `row_stride` elements, of type int32 or int64.
struct TokenIds {
  const void* data;
  bool is_int64;
  int64_t rows, cols, row_stride;
  const int64_t* lengths;  // (N,)
};

// A growable byte buffer that, unlike std::vector, does not zero what it allocates (that memset cost as much
// as the detokenization itself on large batches).
class ByteBuffer {
 public:
  uint8_t* data() { return data_.get(); }
  const uint8_t* data() const { return data_.get(); }
  size_t capacity() const { return cap_; }
  size_t size = 0;  // bytes in use
  void reserve(size_t cap);

 private:
  std::unique_ptr<uint8_t[]> data_;
  size_t cap_ = 0;
};

struct BadToken {
  int64_t row = -1, col = -1, id = 0;
};

// Detokenizes (N, T) ids in one pass: run() checks the ids and fills row_offsets (N + 1,) (the offsets array
// must stay alive until gather), gather() writes the joined text (row_offsets[N] bytes).
class Detokenizer {
 public:
  BadToken run(const TokenIds& ids, const TokenTable& table, int64_t* row_offsets);
  void gather(uint8_t* text) const;

 private:
  std::vector<ByteBuffer> chunks_;  // per thread: the text of rows [first_row_[k], first_row_[k + 1])
  std::vector<int64_t> first_row_;
  const int64_t* row_offsets_ = nullptr;
};

struct ParseOutput {
  float* scores;       // (N, n_max), NaN where invalid or padded
  uint8_t* valid;      // (N,)
  int64_t* principle;  // (N, 2)
  int64_t* critique;   // (N, 2)
  int64_t n_max;
  std::vector<std::vector<extract_scores::Item>> items;  // per row
};

// Parses rows text[row_offsets[r], row_offsets[r + 1]) for r < N.
void extract_scores_parse(const uint8_t* text, const int64_t* row_offsets, int64_t rows,
                          const int64_t* num_responses, double lo, double hi, ParseOutput* out);

}  // namespace cpu
}  // namespace spct
