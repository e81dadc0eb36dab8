#include <algorithm>
#include <charconv>
#include <cstring>
#include <cmath>
#include <limits>

#include <omp.h>

#include "spct/extract_scores_cpu.h"

namespace spct {
namespace cpu {
namespace {

template <typename Id>
const Id* row_ptr(const TokenIds& ids, int64_t r) {
  return static_cast<const Id*>(ids.data) + r * ids.row_stride;
}

// Appends row r's text to buf: one pass over the ids that checks them and copies their bytes. Tokens are a few
// bytes long: a fixed 16-byte block copy, advanced by the true length (the next token overwrites the tail),
// beats a call or a byte loop per token. buf keeps 16 bytes of slack past its size for that.
constexpr int64_t kBlock = 16;

template <typename Id>
BadToken append_row(const TokenIds& ids, const TokenTable& table, int64_t r, ByteBuffer* buf) {
  // Everything lives in locals: byte stores may alias any memory, so fields read through pointers would be
  // reloaded after every copy.
  const Id* row = static_cast<const Id*>(ids.data) + r * ids.row_stride;
  const int64_t n = ids.lengths[r], vocab = table.vocab;
  const int64_t* offsets = table.offsets;
  const uint8_t* bytes = table.bytes;
  const int64_t table_size = offsets[vocab];
  uint8_t* data = buf->data();
  int64_t cap = static_cast<int64_t>(buf->capacity()), u = static_cast<int64_t>(buf->size);
  bool first = true;
  for (int64_t c = 0; c < n; ++c) {
    const int64_t t = static_cast<int64_t>(row[c]);
    if (t < 0 || t >= vocab) return BadToken{r, c, t};
    int64_t begin = offsets[t];
    int64_t len = offsets[t + 1] - begin;
    if (first && len > 0) {
      first = false;
      if (table.strip_leading_space && bytes[begin] == ' ') ++begin, --len;
    }
    if (u + len + kBlock > cap) {
      buf->size = size_t(u);
      buf->reserve(std::max<size_t>(2 * size_t(cap), size_t(u + len + kBlock)));
      data = buf->data();
      cap = static_cast<int64_t>(buf->capacity());
    }
    if (len <= kBlock && begin + kBlock <= table_size) {
      memcpy(data + u, bytes + begin, kBlock);
    } else {
      memcpy(data + u, bytes + begin, size_t(len));
    }
    u += len;
  }
  buf->size = size_t(u);
  return BadToken{};
}

// Exact conversion for numbers off the fast path; std::from_chars is correctly rounded like Python's float().
// It leaves the value unset when out of range: the grammar has no exponent, so that is an overflow (inf) when
// a nonzero digit precedes the point, else an underflow (0).
bool slow_number(const uint8_t* s, int64_t len, double* out) {
  const char* b = reinterpret_cast<const char*>(s);
  const char* e = b + len;
  const bool neg = *b == '-';
  if (neg) ++b;
  double v = 0.0;
  auto res = std::from_chars(b, e, v, std::chars_format::fixed);
  if (res.ec == std::errc::result_out_of_range) {
    bool big = false;
    for (const char* p = b; p < e && *p != '.'; ++p) big |= *p != '0';
    v = big ? std::numeric_limits<double>::infinity() : 0.0;
  }
  *out = neg ? -v : v;
  return true;
}

}  // namespace

void ByteBuffer::reserve(size_t cap) {
  if (cap <= cap_) return;
  std::unique_ptr<uint8_t[]> bigger(new uint8_t[cap]);  // default-initialized: no memset
  if (size > 0) memcpy(bigger.get(), data_.get(), size);
  data_ = std::move(bigger);
  cap_ = cap;
}

BadToken Detokenizer::run(const TokenIds& ids, const TokenTable& table, int64_t* row_offsets) {
  // Each thread detokenizes one contiguous block of rows into its own buffer; gather() joins the buffers.
  const int64_t threads = std::max<int64_t>(1, std::min<int64_t>(omp_get_max_threads(), ids.rows));
  chunks_.clear();
  chunks_.resize(threads);
  first_row_.assign(threads + 1, 0);
  for (int64_t k = 0; k <= threads; ++k) first_row_[k] = ids.rows * k / threads;
  std::vector<BadToken> bad(threads);
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int64_t k = 0; k < threads; ++k) {
    ByteBuffer& buf = chunks_[k];
    buf.reserve(size_t(first_row_[k + 1] - first_row_[k]) * size_t(ids.cols) * 4 + kBlock);  // ~4 bytes a token
    for (int64_t r = first_row_[k]; r < first_row_[k + 1] && bad[k].row < 0; ++r) {
      const size_t before = buf.size;
      bad[k] = ids.is_int64 ? append_row<int64_t>(ids, table, r, &buf) : append_row<int32_t>(ids, table, r, &buf);
      row_offsets[r + 1] = static_cast<int64_t>(buf.size - before);
    }
  }
  for (const BadToken& b : bad) {
    if (b.row >= 0) return b;  // the first bad row, whatever the thread count
  }
  row_offsets[0] = 0;
  for (int64_t r = 0; r < ids.rows; ++r) row_offsets[r + 1] += row_offsets[r];
  row_offsets_ = row_offsets;
  return BadToken{};
}

void Detokenizer::gather(uint8_t* text) const {
  const int64_t threads = static_cast<int64_t>(chunks_.size());
#pragma omp parallel for schedule(static, 1) num_threads(threads)
  for (int64_t k = 0; k < threads; ++k) {
    if (chunks_[k].size > 0) memcpy(text + row_offsets_[first_row_[k]], chunks_[k].data(), chunks_[k].size);
  }
}

void extract_scores_parse(const uint8_t* text, const int64_t* row_offsets, int64_t rows,
                          const int64_t* num_responses, double lo, double hi, ParseOutput* out) {
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  out->items.assign(rows, {});
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* s = text + row_offsets[r];
    const int64_t n = row_offsets[r + 1] - row_offsets[r];
    float* scores = out->scores + r * out->n_max;
    extract_scores::Group g = extract_scores::find_score_group(s, n);
    int ok = 0;
    if (g.start >= 0) {
      ok = extract_scores::parse_group(s, g.begin, g.end, num_responses[r], lo, hi, scores, slow_number);
    }
    if (ok != 1) {
      for (int64_t j = 0; j < out->n_max; ++j) scores[j] = kNaN;
    } else {
      for (int64_t j = num_responses[r]; j < out->n_max; ++j) scores[j] = kNaN;
    }
    out->valid[r] = ok == 1;
    extract_scores::Sections sec = extract_scores::find_sections(s, n, g.start);
    for (int k = 0; k < 2; ++k) {
      out->principle[2 * r + k] = sec.principles[k];
      out->critique[2 * r + k] = sec.critique[k];
    }
    std::vector<extract_scores::Item>& items = out->items[r];
    extract_scores::for_each_item(
        s, sec.principles[0], sec.principles[1], [&](const extract_scores::Item& it) { items.push_back(it); },
        slow_number);
  }
}

}  // namespace cpu
}  // namespace spct
