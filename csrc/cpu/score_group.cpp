// Token masks for the score-group grammar (spct/score_group.h). The group so far is run through a small state
// machine once; each candidate token (found once per byte table) then continues from that state.
#include "spct/score_group.h"

namespace spct {
namespace cpu {
namespace {

constexpr int kMaxDigits = 18;

struct State {
  int64_t count = 0;        // complete numbers before the current one
  char digits[kMaxDigits];  // the current number's digits so far
  int len = 0;
  bool pending_space = false;  // "," arrived, its " " not yet
  bool closed = false;
  bool dead = false;
};

struct Grammar {
  int64_t n, lo, hi;
  int hi_digits;

  int64_t value(const State& s) const {
    int64_t v = 0;
    for (int i = 0; i < s.len; ++i) v = v * 10 + (s.digits[i] - '0');
    return v;
  }
  // Some integer in [lo, hi], written without leading zeros, starts with the current digits.
  bool number_prefix(const State& s) const {
    if (s.len == 0) return true;
    if (s.digits[0] == '0') return s.len == 1 && lo == 0;
    if (s.len > hi_digits) return false;
    const int64_t p = value(s);
    int64_t scale = 1;
    for (int d = s.len; d <= hi_digits; ++d, scale *= 10) {  // numbers of d digits that start with p
      const int64_t first = p * scale, last = (p + 1) * scale - 1;
      if (first <= hi && last >= lo) return true;
    }
    return false;
  }
  bool number(const State& s) const {
    if (s.len == 0 || (s.digits[0] == '0' && s.len > 1)) return false;
    const int64_t v = value(s);
    return lo <= v && v <= hi;
  }
  void feed(State& s, uint8_t c) const {
    if (s.dead) return;
    if (s.closed) {
      s.dead = true;
    } else if (c >= '0' && c <= '9') {
      if (s.pending_space || s.len == kMaxDigits) {
        s.dead = true;
        return;
      }
      s.digits[s.len++] = static_cast<char>(c);
      s.dead = !number_prefix(s);
    } else if (c == ',') {
      if (s.pending_space || !number(s) || s.count + 1 >= n) {
        s.dead = true;
        return;
      }
      ++s.count;
      s.len = 0;
      s.pending_space = true;
    } else if (c == ' ') {
      if (!s.pending_space) {
        s.dead = true;
        return;
      }
      s.pending_space = false;
    } else if (c == '}') {
      if (s.pending_space || !number(s) || s.count + 1 != n) {
        s.dead = true;
        return;
      }
      s.closed = true;
    } else {
      s.dead = true;
    }
  }
};

}  // namespace

std::vector<int32_t> score_group_candidates(const uint8_t* data, const int64_t* offsets, int64_t vocab) {
  std::vector<int32_t> out;
  for (int64_t t = 0; t < vocab; ++t) {
    bool ok = offsets[t + 1] > offsets[t];
    for (int64_t b = offsets[t]; b < offsets[t + 1] && ok; ++b) {
      const uint8_t c = data[b];
      ok = (c >= '0' && c <= '9') || c == ',' || c == ' ' || c == '}';
    }
    if (ok) out.push_back(static_cast<int32_t>(t));
  }
  return out;
}

ScoreGroupResult score_group_allowed(const uint8_t* data, const int64_t* offsets, const int32_t* candidates,
                                     int64_t num_candidates, const int64_t* group, int64_t group_len, int64_t n,
                                     int64_t lo, int64_t hi) {
  int hi_digits = 1;
  for (int64_t v = hi; v >= 10; v /= 10) ++hi_digits;
  const Grammar g{n, lo, hi, hi_digits};
  State start;
  for (int64_t i = 0; i < group_len && !start.dead; ++i) {
    for (int64_t b = offsets[group[i]]; b < offsets[group[i] + 1]; ++b) g.feed(start, data[b]);
  }
  ScoreGroupResult out;
  out.viable = !start.dead;
  out.closed = !start.dead && start.closed;
  if (start.dead || start.closed) return out;
  for (int64_t i = 0; i < num_candidates; ++i) {
    const int32_t t = candidates[i];
    State s = start;
    for (int64_t b = offsets[t]; b < offsets[t + 1] && !s.dead; ++b) g.feed(s, data[b]);
    if (!s.dead) out.allowed.push_back(t);
  }
  return out;
}

}  // namespace cpu
}  // namespace spct
