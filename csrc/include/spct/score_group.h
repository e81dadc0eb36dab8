// The score-group grammar of forced scores: the text after "\boxed{" must be "a, b, ..., z}" with exactly n
// integers in [lo, hi] (0 <= lo <= hi < 10^18), written without leading zeros and separated by ", ".
// score_group_allowed lists the tokens that keep the group text a prefix of such a group, from a byte table.
#pragma once

#include <cstdint>
#include <vector>

namespace spct {
namespace cpu {

struct ScoreGroupResult {
  std::vector<int32_t> allowed;  // token ids in increasing order; tokens without bytes are never allowed
  bool viable = false;           // the group so far is a prefix of a valid group
  bool closed = false;           // the group so far is complete (its "}" arrived)
};

// The non-empty tokens made only of the group's bytes (digits, ",", " ", "}"): no other token is ever allowed.
// data / offsets: the byte table (offsets has vocab + 1 entries).
std::vector<int32_t> score_group_candidates(const uint8_t* data, const int64_t* offsets, int64_t vocab);

// group: the ids generated after "\boxed{"; candidates: score_group_candidates of the same table.
ScoreGroupResult score_group_allowed(const uint8_t* data, const int64_t* offsets, const int32_t* candidates,
                                     int64_t num_candidates, const int64_t* group, int64_t group_len, int64_t n,
                                     int64_t lo, int64_t hi);

}  // namespace cpu
}  // namespace spct
