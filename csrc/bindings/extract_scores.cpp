// spct._C bindings of extract_scores. They only marshal: python/spct/ops/extract_scores.py checks the arguments
// (row offsets, lengths, num_responses, the token table), the kernels check the token ids they read.
#include "common.h"

#include <algorithm>

#include "spct/extract_scores_cpu.h"
#if defined(SPCT_WITH_CUDA)
#include "spct/extract_scores_cuda.h"
#endif

namespace spct_bind {
namespace {

// Principle items of every row, flattened: (item_counts (N,), item_spans (P, 2), item_weights (P,)).
py::tuple pack_items(const std::vector<std::vector<spct::extract_scores::Item>>& rows) {
  int64_t total = 0;
  for (const auto& items : rows) total += static_cast<int64_t>(items.size());
  auto counts = empty<int64_t>({static_cast<py::ssize_t>(rows.size())});
  auto spans = empty<int64_t>({total, 2});
  auto weights = empty<double>({total});
  int64_t* c = counts.mutable_data();
  int64_t* sp = spans.mutable_data();
  double* w = weights.mutable_data();
  for (const auto& items : rows) {
    *c++ = static_cast<int64_t>(items.size());
    for (const auto& it : items) {
      *sp++ = it.name_begin;
      *sp++ = it.name_end;
      *w++ = it.weight;
    }
  }
  return py::make_tuple(counts, spans, weights);
}

// Parse rows of `text` and pack the results as numpy arrays:
// (text, row_offsets, scores, valid, principle_span, critique_span, item_counts, item_spans, item_weights).
py::tuple parse(const CArray<uint8_t>& text, const CArray<int64_t>& row_offsets,
                const CArray<int64_t>& num_responses, double lo, double hi) {
  const int64_t rows = row_offsets.shape(0) - 1;
  const int64_t* nr = num_responses.data();
  const int64_t n_max = rows == 0 ? 0 : *std::max_element(nr, nr + rows);
  auto scores = empty<float>({rows, n_max});
  auto valid = empty<bool>({rows});
  auto pspan = empty<int64_t>({rows, 2});
  auto cspan = empty<int64_t>({rows, 2});
  spct::cpu::ParseOutput out{scores.mutable_data(), reinterpret_cast<uint8_t*>(valid.mutable_data()),
                             pspan.mutable_data(), cspan.mutable_data(), n_max, {}};
  {
    py::gil_scoped_release nogil;
    spct::cpu::extract_scores_parse(text.data(), row_offsets.data(), rows, nr, lo, hi, &out);
  }
  py::tuple items = pack_items(out.items);
  return py::make_tuple(text, row_offsets, scores, valid, pspan, cspan, items[0], items[1], items[2]);
}

// text (bytes,) uint8 holding N rows at row_offsets (N + 1,); num_responses (N,).
py::tuple extract_scores_text(const CArray<uint8_t>& text, const CArray<int64_t>& row_offsets,
                              const CArray<int64_t>& num_responses, double lo, double hi) {
  return parse(text, row_offsets, num_responses, lo, hi);
}

// token_ids (N, T) int32/int64 with contiguous rows; lengths, num_responses (N,); the vocabulary's bytes and
// offsets (vocab + 1,). A token id outside the vocabulary (the detokenizer's check) is a ValueError.
py::tuple extract_scores_tokens(const py::array& ids, const CArray<int64_t>& lengths,
                                const CArray<uint8_t>& table_bytes, const CArray<int64_t>& table_offsets,
                                bool strip_leading_space, const CArray<int64_t>& num_responses, double lo,
                                double hi) {
  const int64_t rows = ids.shape(0), cols = ids.shape(1);
  const auto item = static_cast<int64_t>(ids.itemsize());
  const spct::cpu::TokenTable table{table_bytes.data(), table_offsets.data(), table_offsets.shape(0) - 1,
                                    strip_leading_space};
  const spct::cpu::TokenIds tok{ids.data(), item == 8, rows, cols, ids.strides(0) / item, lengths.data()};
  auto row_offsets = empty<int64_t>({rows + 1});
  spct::cpu::Detokenizer detok;
  spct::cpu::BadToken bad;
  {
    py::gil_scoped_release nogil;
    bad = detok.run(tok, table, row_offsets.mutable_data());
  }
  if (bad.row >= 0) {
    fail("token id " + std::to_string(bad.id) + " at row " + std::to_string(bad.row) + ", position " +
         std::to_string(bad.col) + " is outside the vocabulary [0, " + std::to_string(table.vocab) + ")");
  }
  auto text = empty<uint8_t>({row_offsets.data()[rows]});
  {
    py::gil_scoped_release nogil;
    detok.gather(text.mutable_data());
  }
  return parse(text, row_offsets, num_responses, lo, hi);
}

#if defined(SPCT_WITH_CUDA)
// The token side of a device call: ids (N, T) int32/int64 with contiguous rows, lengths (N,) int64, the
// vocabulary's bytes (uint8) and offsets (vocab + 1,) int64, all on one device.
struct TokenViews {
  View ids, lengths, table_bytes, table_offsets;
  bool strip_leading_space = false;
};

// The parse pass's inputs and outputs on the tokens' device: row_offsets (N + 1,), text (row_offsets[N],) uint8,
// num_responses (N,), scores (N, n_max) float32, valid (N,) bool, principle_span and critique_span (N, 2),
// item_counts (N,) int64, slow (N,) int32.
struct ParseViews {
  View row_offsets, text, num_responses, scores, valid, principle_span, critique_span, item_counts, slow;
  double lo = 0.0, hi = 0.0;
};

spct::cuda::DeviceTokens device_tokens(const TokenViews& t) {
  return spct::cuda::DeviceTokens{t.ids.ptr<const void>(),
                                  t.ids.dtype == "int64",
                                  t.ids.size(0),
                                  t.ids.size(1),
                                  t.ids.stride(0),
                                  t.lengths.ptr<const int64_t>(),
                                  t.table_bytes.ptr<const uint8_t>(),
                                  t.table_offsets.ptr<const int64_t>(),
                                  t.table_offsets.size(0) - 1,
                                  t.strip_leading_space};
}

spct::cuda::DeviceParse device_parse(const ParseViews& p) {
  return spct::cuda::DeviceParse{p.row_offsets.ptr<const int64_t>(),
                                 p.text.ptr<uint8_t>(),
                                 p.num_responses.ptr<const int64_t>(),
                                 p.scores.size(1),
                                 p.lo,
                                 p.hi,
                                 p.scores.ptr<float>(),
                                 p.valid.ptr<bool>(),
                                 p.principle_span.ptr<int64_t>(),
                                 p.critique_span.ptr<int64_t>(),
                                 p.item_counts.ptr<int64_t>(),
                                 p.slow.ptr<int32_t>()};
}

void bind_cuda_structs(py::module_& m) {
  py::class_<TokenViews>(m, "ExtractScoresTokens", "Token ids, lengths and the token table of a device call.")
      .def(py::init([](View ids, View lengths, View table_bytes, View table_offsets, bool strip_leading_space) {
             return TokenViews{std::move(ids), std::move(lengths), std::move(table_bytes), std::move(table_offsets),
                               strip_leading_space};
           }),
           py::arg("ids"), py::arg("lengths"), py::arg("table_bytes"), py::arg("table_offsets"),
           py::arg("strip_leading_space"));
  py::class_<ParseViews>(m, "ExtractScoresParse", "Buffers of the device parse pass (see ParseViews).")
      .def(py::init([](View row_offsets, View text, View num_responses, double lo, double hi, View scores,
                       View valid, View principle_span, View critique_span, View item_counts, View slow) {
             return ParseViews{std::move(row_offsets), std::move(text),   std::move(num_responses),
                               std::move(scores),      std::move(valid),  std::move(principle_span),
                               std::move(critique_span), std::move(item_counts), std::move(slow), lo, hi};
           }),
           py::arg("row_offsets"), py::arg("text"), py::arg("num_responses"), py::arg("lo"), py::arg("hi"),
           py::arg("scores"), py::arg("valid"), py::arg("principle_span"), py::arg("critique_span"),
           py::arg("item_counts"), py::arg("slow"));
}

void bind_cuda(py::module_& m) {
  bind_cuda_structs(m);
  m.def(
      "extract_scores_sizes_cuda",
      [](const TokenViews& tokens, const View& row_bytes, const View& bad, uintptr_t stream) {
        cuda_check(spct::cuda::extract_scores_sizes(device_tokens(tokens), row_bytes.ptr<int64_t>(),
                                                    bad.ptr<unsigned long long>(), dptr<void>(stream)));
      },
      py::arg("tokens"), py::arg("row_bytes"), py::arg("bad"), py::arg("stream"),
      "Each row's text size (N,) int64; the first out-of-vocabulary row * T + col into bad (1,) int64.");
  m.def(
      "extract_scores_parse_cuda",
      [](const TokenViews& tokens, const ParseViews& parse, uintptr_t stream) {
        cuda_check(spct::cuda::extract_scores_parse(device_tokens(tokens), device_parse(parse), dptr<void>(stream)));
      },
      py::arg("tokens"), py::arg("parse"), py::arg("stream"), "Detokenize into parse.text and parse every row.");
  m.def(
      "extract_scores_items_cuda",
      [](const View& row_offsets, const View& text, const View& principle_span, const View& item_starts,
         const View& item_spans, const View& item_weights, uintptr_t stream) {
        const spct::cuda::DeviceItems items{principle_span.size(0),
                                            row_offsets.ptr<const int64_t>(),
                                            text.ptr<const uint8_t>(),
                                            principle_span.ptr<const int64_t>(),
                                            item_starts.ptr<const int64_t>(),
                                            item_spans.ptr<int64_t>(),
                                            item_weights.ptr<double>()};
        cuda_check(spct::cuda::extract_scores_items(items, dptr<void>(stream)));
      },
      py::arg("row_offsets"), py::arg("text"), py::arg("principle_span"), py::arg("item_starts"),
      py::arg("item_spans"), py::arg("item_weights"), py::arg("stream"),
      "Principle items: name spans (P, 2) int64 and weights (P,) float64, row r's from item_starts[r].");
}
#endif

}  // namespace

void bind_extract_scores(py::module_& m) {
  m.def("extract_scores_text", &extract_scores_text, py::arg("text"), py::arg("row_offsets"),
        py::arg("num_responses"), py::arg("lo"), py::arg("hi"),
        "Parse N generations given as one byte buffer and row offsets (N + 1,).");
  m.def("extract_scores_tokens", &extract_scores_tokens, py::arg("token_ids"), py::arg("lengths"),
        py::arg("table_bytes"), py::arg("table_offsets"), py::arg("strip_leading_space"), py::arg("num_responses"),
        py::arg("lo"), py::arg("hi"), "Detokenize (N, T) token ids with a byte table and parse each row.");
#if defined(SPCT_WITH_CUDA)
  bind_cuda(m);
#endif
}

}  // namespace spct_bind
