#include <charconv>
#include <cmath>
#include <limits>

#include "spct/extract_cpu.h"

namespace spct {
namespace cpu {
namespace {

template <typename Id>
const Id* row_ptr(const TokenIds& ids, int64_t r) {
  return static_cast<const Id*>(ids.data) + r * ids.row_stride;
}

template <typename Id>
int64_t row_size(const TokenIds& ids, const TokenTable& table, int64_t r, BadToken* bad) {
  const Id* row = row_ptr<Id>(ids, r);
  int64_t total = 0;
  bool first = true;
  for (int64_t c = 0; c < ids.lengths[r]; ++c) {
    int64_t t = static_cast<int64_t>(row[c]);
    if (t < 0 || t >= table.vocab) {
      *bad = BadToken{r, c, t};
      return 0;
    }
    int64_t len = table.offsets[t + 1] - table.offsets[t];
    if (first && len > 0) {
      first = false;
      if (table.strip_leading_space && table.bytes[table.offsets[t]] == ' ') --len;
    }
    total += len;
  }
  return total;
}

template <typename Id>
void row_copy(const TokenIds& ids, const TokenTable& table, int64_t r, uint8_t* out) {
  const Id* row = row_ptr<Id>(ids, r);
  bool first = true;
  for (int64_t c = 0; c < ids.lengths[r]; ++c) {
    int64_t t = static_cast<int64_t>(row[c]);
    const uint8_t* b = table.bytes + table.offsets[t];
    int64_t len = table.offsets[t + 1] - table.offsets[t];
    if (first && len > 0) {
      first = false;
      if (table.strip_leading_space && b[0] == ' ') ++b, --len;
    }
    for (int64_t i = 0; i < len; ++i) out[i] = b[i];  // tokens are a few bytes: a loop beats memcpy calls
    out += len;
  }
}

// Exact conversion for numbers off the fast path; std::from_chars is correctly rounded like Python's float().
// It takes no '+' and leaves the value unset when out of range: the grammar has no exponent, so that is an
// overflow (inf) when a nonzero digit precedes the point, else an underflow (0).
bool slow_number(const uint8_t* s, int64_t len, double* out) {
  const char* b = reinterpret_cast<const char*>(s);
  const char* e = b + len;
  bool neg = *b == '-';
  if (*b == '+' || *b == '-') ++b;
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

BadToken detokenized_sizes(const TokenIds& ids, const TokenTable& table, int64_t* row_bytes) {
  std::vector<BadToken> bad(ids.rows);
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < ids.rows; ++r) {
    row_bytes[r] = ids.is_int64 ? row_size<int64_t>(ids, table, r, &bad[r]) : row_size<int32_t>(ids, table, r, &bad[r]);
  }
  for (const BadToken& b : bad) {
    if (b.row >= 0) return b;  // the first bad row, whatever the thread count
  }
  return BadToken{};
}

void detokenize(const TokenIds& ids, const TokenTable& table, const int64_t* row_offsets, uint8_t* text) {
#pragma omp parallel for schedule(static)
  for (int64_t r = 0; r < ids.rows; ++r) {
    if (ids.is_int64) {
      row_copy<int64_t>(ids, table, r, text + row_offsets[r]);
    } else {
      row_copy<int32_t>(ids, table, r, text + row_offsets[r]);
    }
  }
}

void parse_rows(const uint8_t* text, const int64_t* row_offsets, int64_t rows, const int64_t* num_responses,
                double lo, double hi, ParseOutput* out) {
  const float kNaN = std::numeric_limits<float>::quiet_NaN();
  out->items.assign(rows, {});
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* s = text + row_offsets[r];
    const int64_t n = row_offsets[r + 1] - row_offsets[r];
    float* scores = out->scores + r * out->n_max;
    extract::Group g = extract::find_score_group(s, n);
    int ok = 0;
    if (g.start >= 0) ok = extract::parse_group(s, g.begin, g.end, num_responses[r], lo, hi, scores, slow_number);
    if (ok != 1) {
      for (int64_t j = 0; j < out->n_max; ++j) scores[j] = kNaN;
    } else {
      for (int64_t j = num_responses[r]; j < out->n_max; ++j) scores[j] = kNaN;
    }
    out->valid[r] = ok == 1;
    extract::Sections sec = extract::find_sections(s, n, g.start);
    for (int k = 0; k < 2; ++k) {
      out->principle[2 * r + k] = sec.principles[k];
      out->critique[2 * r + k] = sec.critique[k];
    }
    std::vector<extract::Item>& items = out->items[r];
    extract::for_each_item(
        s, sec.principles[0], sec.principles[1], [&](const extract::Item& it) { items.push_back(it); },
        slow_number);
  }
}

}  // namespace cpu
}  // namespace spct
