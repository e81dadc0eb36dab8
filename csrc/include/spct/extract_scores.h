// Framework-free parsing of GRM generations: the score group, the principle and critique sections and the
// principle items. Every function works on one row's bytes and is compiled both for the host (C++ kernel) and
// for the device (CUDA kernel), so the two backends run the same code. The grammar is written out in
// python/spct/ops/extract_scores.py and mirrored line by line by python/spct/ops/ref/extract_scores.py.
#pragma once

#include <cstdint>
#include <cstring>

#include "spct/common.h"

namespace spct {
namespace extract_scores {

// A decimal that the fast path below cannot convert exactly (more significant digits than a double holds, or
// more than 22 fractional digits). The host converts it with std::from_chars; the device flags the row.
constexpr int kNeedsSlowPath = 2;

SPCT_HD bool is_space(uint8_t c) {
  return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}
SPCT_HD bool is_digit(uint8_t c) { return c >= '0' && c <= '9'; }
SPCT_HD uint8_t lower(uint8_t c) { return (c >= 'A' && c <= 'Z') ? uint8_t(c + 32) : c; }

// Does s[p:] start with the lower-case ASCII keyword kw (case-insensitively)?
SPCT_HD bool starts_with_ci(const uint8_t* s, int64_t n, int64_t p, const char* kw, int64_t* end) {
  int64_t i = 0;
  for (; kw[i] != 0; ++i) {
    if (p + i >= n || lower(s[p + i]) != uint8_t(kw[i])) return false;
  }
  *end = p + i;
  return true;
}

SPCT_HD bool starts_with(const uint8_t* s, int64_t n, int64_t p, const char* lit) {
  int64_t i = 0;
  for (; lit[i] != 0; ++i) {
    if (p + i >= n || s[p + i] != uint8_t(lit[i])) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------------------------------------
// Numbers: NUMBER := "-"? DIGIT+ ("." DIGIT+)?   (no "+", no exponent, no leading or trailing point)
// ---------------------------------------------------------------------------------------------------------

// Length of the NUMBER starting at s[p] (0 if none). `sign_ok` allows the leading sign.
SPCT_HD int64_t number_length(const uint8_t* s, int64_t n, int64_t p, bool sign_ok) {
  int64_t i = p;
  if (sign_ok && i < n && s[i] == '-') ++i;
  int64_t d = i;
  while (i < n && is_digit(s[i])) ++i;
  if (i == d) return 0;
  if (i + 1 < n && s[i] == '.' && is_digit(s[i + 1])) {
    ++i;
    while (i < n && is_digit(s[i])) ++i;
  }
  return i - p;
}

// Exact conversion of a NUMBER to the nearest double when the digits fit the fast path (Clinger): the
// significand below 2^53 and at most 22 fractional digits, so one IEEE division of two exact doubles gives the
// correctly rounded result, the same value as Python's float() and std::from_chars. Returns 0 on success,
// kNeedsSlowPath otherwise.
SPCT_HD int fast_number(const uint8_t* s, int64_t len, double* out) {
  const double kPow10[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,  1e8,  1e9,  1e10, 1e11,
                             1e12, 1e13, 1e14, 1e15, 1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
  int64_t i = 0;
  bool neg = false;
  if (s[0] == '-') {
    neg = true;
    ++i;
  }
  uint64_t m = 0;
  int frac = -1;  // number of fractional digits, -1 before the point
  int64_t end = len;
  // Trailing zeros of the fraction do not change the value; dropping them keeps "7.000000000000000000000000"
  // on the fast path.
  bool has_point = false;
  for (int64_t j = i; j < len; ++j) has_point |= s[j] == '.';
  if (has_point) {
    while (end > i && s[end - 1] == '0') --end;
    if (s[end - 1] == '.') --end;
  }
  for (; i < end; ++i) {
    if (s[i] == '.') {
      frac = 0;
      continue;
    }
    if (m > (uint64_t(1) << 53) / 10) return kNeedsSlowPath;
    m = m * 10 + uint64_t(s[i] - '0');
    if (frac >= 0) ++frac;
  }
  if (m >= (uint64_t(1) << 53) || frac > 22) return kNeedsSlowPath;
  double v = double(m);
  if (frac > 0) v /= kPow10[frac];
  *out = neg ? -v : v;
  return 0;
}

// ---------------------------------------------------------------------------------------------------------
// Score group: the last complete "\boxed{...}" or "[[...]]" (by start offset).
// ---------------------------------------------------------------------------------------------------------

struct Group {
  int64_t start = -1;  // offset of the opener, -1 when there is no complete group
  int64_t begin = -1;  // content [begin, end)
  int64_t end = -1;
};

// First index of byte c in s[from, n), or n; last index of c in s[0, to), or -1. The host uses libc's
// vectorized memchr/memrchr: these scans are most of the parse time on long generations.
SPCT_HD int64_t find_byte(const uint8_t* s, int64_t from, int64_t n, uint8_t c) {
#if defined(__CUDA_ARCH__)
  while (from < n && s[from] != c) ++from;
  return from;
#else
  if (from >= n) return n;
  const void* q = memchr(s + from, c, size_t(n - from));
  return q == nullptr ? n : static_cast<const uint8_t*>(q) - s;
#endif
}

SPCT_HD int64_t rfind_byte(const uint8_t* s, int64_t to, uint8_t c) {
#if defined(__CUDA_ARCH__)
  while (to > 0 && s[to - 1] != c) --to;
  return to - 1;
#else
  if (to <= 0) return -1;
  const void* q = memrchr(s, c, size_t(to));
  return q == nullptr ? -1 : static_cast<const uint8_t*>(q) - s;
#endif
}

// Start of the last pair "cc" lying inside s[0, to), or -1.
SPCT_HD int64_t rfind_pair(const uint8_t* s, int64_t to, uint8_t c) {
  for (int64_t i = rfind_byte(s, to, c); i > 0; i = rfind_byte(s, i, c)) {
    if (s[i - 1] == c) return i - 1;  // i is the last c, so no pair starts at i
  }
  return -1;
}

SPCT_HD Group find_score_group(const uint8_t* s, int64_t n) {
  // A "\boxed{" at p is complete iff some '}' lies at or after p + 7, i.e. p + 7 <= last '}'; a "[[" at p
  // iff some "]]" starts at or after p + 2.
  const int64_t last_brace = rfind_byte(s, n, '}');
  const int64_t last_dbl = rfind_pair(s, n, ']');
  int64_t boxed = -1;
  for (int64_t i = rfind_byte(s, last_brace - 6, '\\'); i >= 0; i = rfind_byte(s, i, '\\')) {
    if (starts_with(s, n, i, "\\boxed{")) {
      boxed = i;
      break;
    }
  }
  const int64_t brackets = last_dbl >= 2 ? rfind_pair(s, last_dbl, '[') : -1;
  Group g;
  if (boxed < 0 && brackets < 0) return g;
  if (boxed > brackets) {
    g.start = boxed;
    g.begin = boxed + 7;
    g.end = find_byte(s, g.begin, n, '}');  // exists: last_brace >= begin
  } else {
    g.start = brackets;
    g.begin = brackets + 2;
    int64_t e = find_byte(s, g.begin, n, ']');
    while (s[e + 1] != ']') e = find_byte(s, e + 1, n, ']');  // exists: last_dbl >= begin
    g.end = e;
  }
  return g;
}

// Parse the group content CONTENT := WS* NUMBER WS* ("," WS* NUMBER WS*)* into `scores` (float32). Valid iff
// exactly `num_responses` numbers, each within [lo, hi]. Returns 1 (valid), 0 (invalid) or kNeedsSlowPath when
// a number needs the exact slow conversion and `slow` is null (device).
template <typename SlowConvert>
SPCT_HD int parse_group(const uint8_t* s, int64_t begin, int64_t end, int64_t num_responses, double lo, double hi,
                        float* scores, SlowConvert slow) {
  int64_t count = 0;
  int64_t i = begin;
  while (true) {
    while (i < end && is_space(s[i])) ++i;
    int64_t len = number_length(s, end, i, true);
    if (len == 0) return 0;
    if (count >= num_responses) return 0;
    double v = 0.0;
    if (fast_number(s + i, len, &v) != 0) {
      if (!slow(s + i, len, &v)) return kNeedsSlowPath;
    }
    if (!(v >= lo && v <= hi)) return 0;
    scores[count++] = float(v);
    i += len;
    while (i < end && is_space(s[i])) ++i;
    if (i == end) break;
    if (s[i] != ',') return 0;
    ++i;
  }
  return count == num_responses ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------------------
// Sections. A header line: at a line start, skip DECOR = [ \t#*>-], then a KEYWORD (ASCII, any case), then
// [ \t*]*, then ':' or the end of the line. Keywords: "specific criteria", "analysis", "final scores", "scores".
// A section's content starts after the keyword and any [ \t*:], and ends at the next header line, at the score
// group's opener if that comes first, or at the end of the text; ASCII whitespace is trimmed from both ends.
// ---------------------------------------------------------------------------------------------------------

enum Header { kNone = 0, kPrinciples = 1, kCritique = 2, kScores = 3 };

// If a header starts at line start p, return its kind and set *content to where its content begins.
SPCT_HD int header_at(const uint8_t* s, int64_t n, int64_t p, int64_t* content) {
  int64_t i = p;
  while (i < n && (s[i] == ' ' || s[i] == '\t' || s[i] == '#' || s[i] == '*' || s[i] == '>' || s[i] == '-')) ++i;
  int kind = kNone;
  int64_t e = 0;
  if (starts_with_ci(s, n, i, "specific criteria", &e)) {
    kind = kPrinciples;
  } else if (starts_with_ci(s, n, i, "analysis", &e)) {
    kind = kCritique;
  } else if (starts_with_ci(s, n, i, "final scores", &e) || starts_with_ci(s, n, i, "scores", &e)) {
    kind = kScores;
  } else {
    return kNone;
  }
  int64_t j = e;
  while (j < n && (s[j] == ' ' || s[j] == '\t' || s[j] == '*')) ++j;
  if (!(j == n || s[j] == ':' || s[j] == '\n' || s[j] == '\r')) return kNone;
  while (e < n && (s[e] == ' ' || s[e] == '\t' || s[e] == '*' || s[e] == ':')) ++e;
  *content = e;
  return kind;
}

struct Sections {
  int64_t principles[2] = {-1, -1};
  int64_t critique[2] = {-1, -1};
};

SPCT_HD void trim(const uint8_t* s, int64_t* b, int64_t* e) {
  while (*b < *e && is_space(s[*b])) ++*b;
  while (*e > *b && is_space(s[*e - 1])) --*e;
}

SPCT_HD Sections find_sections(const uint8_t* s, int64_t n, int64_t group_start) {
  Sections out;
  int64_t* open = nullptr;  // the section whose end is still to be found
  for (int64_t p = 0; p < n || p == 0; p = find_byte(s, p, n, '\n') + 1) {
    int64_t content = 0;
    int kind = header_at(s, n, p, &content);
    if (kind != kNone) {
      if (open != nullptr) {  // this header line closes the open section
        open[1] = p;
        open = nullptr;
      }
      int64_t* span = kind == kPrinciples ? out.principles : kind == kCritique ? out.critique : nullptr;
      if (span != nullptr && span[0] < 0) {
        span[0] = content;
        open = span;
      }
    }
    if (p >= n) break;
  }
  if (open != nullptr) open[1] = n;
  int64_t* spans[2] = {out.principles, out.critique};
  for (int k = 0; k < 2; ++k) {
    int64_t* span = spans[k];
    if (span[0] < 0) continue;
    if (group_start >= span[0] && group_start < span[1]) span[1] = group_start;
    trim(s, &span[0], &span[1]);
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// Principle items, inside the principles span. A list item line: after its indentation [ \t]*, a marker
// ("-", "*" or "+", or DIGIT+ followed by "." or ")"), then at least one space or tab. Items are the list
// lines indented no deeper than the first one; without any list line, every non-blank line is an item.
// Name: after the marker, skip [ \t*_]; up to the first '(' or ':' or the line end; trim [ \t\r*_] at the end.
// Weight: the first "weight" (any case) followed by [ \t:=*]* and a NUMBER (with [ \t]* "%" a percentage);
// else the first "(" [ \t]* NUMBER [ \t]* "%"; a percentage is divided by 100; else no weight (NaN).
// ---------------------------------------------------------------------------------------------------------

struct Item {
  int64_t name_begin, name_end;
  double weight;  // NaN when the line gives none
  int slow;       // 1 when the weight needs the exact slow conversion (device only)
};

// Marker length at s[i] (after indentation), 0 when the line is not a list item.
SPCT_HD int64_t list_marker(const uint8_t* s, int64_t e, int64_t i) {
  int64_t j = i;
  if (j < e && (s[j] == '-' || s[j] == '*' || s[j] == '+')) {
    ++j;
  } else {
    while (j < e && is_digit(s[j])) ++j;
    if (j == i || j >= e || (s[j] != '.' && s[j] != ')')) return 0;
    ++j;
  }
  if (j >= e || (s[j] != ' ' && s[j] != '\t')) return 0;
  return j - i;
}

SPCT_HD int64_t line_end(const uint8_t* s, int64_t e, int64_t p) { return find_byte(s, p, e, '\n'); }

SPCT_HD int64_t indentation(const uint8_t* s, int64_t e, int64_t p) {
  int64_t i = p;
  while (i < e && (s[i] == ' ' || s[i] == '\t')) ++i;
  return i - p;
}

// Indentation of the first list line, or -1 when the span has none.
SPCT_HD int64_t first_item_indent(const uint8_t* s, int64_t b, int64_t e) {
  for (int64_t p = b; p < e; p = line_end(s, e, p) + 1) {
    int64_t ind = indentation(s, e, p);
    if (list_marker(s, line_end(s, e, p), p + ind) > 0) return ind;
  }
  return -1;
}

template <typename SlowConvert>
SPCT_HD double item_weight(const uint8_t* s, int64_t b, int64_t e, int* slow_needed, SlowConvert slow) {
  const double kNaN = quiet_nan();
  auto convert = [&](int64_t p, int64_t len, bool pct) -> double {
    double v = 0.0;
    if (fast_number(s + p, len, &v) != 0 && !slow(s + p, len, &v)) {
      *slow_needed = 1;
      return kNaN;
    }
    return pct ? v / 100.0 : v;
  };
  auto percent_after = [&](int64_t p) -> bool {
    while (p < e && (s[p] == ' ' || s[p] == '\t')) ++p;
    return p < e && s[p] == '%';
  };
  for (int64_t p = b; p < e; ++p) {
    int64_t k = 0;
    if (!starts_with_ci(s, e, p, "weight", &k)) continue;
    while (k < e && (s[k] == ' ' || s[k] == '\t' || s[k] == ':' || s[k] == '=' || s[k] == '*')) ++k;
    int64_t len = number_length(s, e, k, false);
    if (len > 0) return convert(k, len, percent_after(k + len));
  }
  for (int64_t p = b; p < e; ++p) {
    if (s[p] != '(') continue;
    int64_t k = p + 1;
    while (k < e && (s[k] == ' ' || s[k] == '\t')) ++k;
    int64_t len = number_length(s, e, k, false);
    if (len > 0 && percent_after(k + len)) return convert(k, len, true);
  }
  return kNaN;
}

// Calls emit(Item) for every principle item of span [b, e), in order; returns the number of items.
template <typename Emit, typename SlowConvert>
SPCT_HD int64_t for_each_item(const uint8_t* s, int64_t b, int64_t e, Emit emit, SlowConvert slow) {
  if (b < 0) return 0;
  int64_t top = first_item_indent(s, b, e);
  int64_t count = 0;
  for (int64_t p = b; p < e; p = line_end(s, e, p) + 1) {
    int64_t le = line_end(s, e, p);
    int64_t ind = indentation(s, le, p);
    int64_t i = p + ind;
    if (top >= 0) {
      int64_t m = list_marker(s, le, i);
      if (m == 0 || ind > top) continue;
      i += m;
    } else if (i == le || (i + 1 == le && s[i] == '\r')) {
      continue;  // blank line
    }
    while (i < le && (s[i] == ' ' || s[i] == '\t' || s[i] == '*' || s[i] == '_')) ++i;
    int64_t ne = i;
    while (ne < le && s[ne] != '(' && s[ne] != ':') ++ne;
    int64_t name_end = ne;
    while (name_end > i && (s[name_end - 1] == ' ' || s[name_end - 1] == '\t' || s[name_end - 1] == '\r' ||
                            s[name_end - 1] == '*' || s[name_end - 1] == '_'))
      --name_end;
    Item item;
    item.name_begin = i;
    item.name_end = name_end;
    item.slow = 0;
    item.weight = item_weight(s, p, le, &item.slow, slow);
    emit(item);
    ++count;
  }
  return count;
}

}  // namespace extract_scores
}  // namespace spct
