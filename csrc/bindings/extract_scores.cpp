// spct._C bindings of extract_scores.
#include "common.h"

#include <algorithm>

#include "spct/extract_scores_cpu.h"
#if defined(SPCT_WITH_CUDA)
#include "spct/extract_scores_cuda.h"
#endif

namespace spct_bind {
namespace {

void check_num_responses(const CArray<int64_t>& num_responses, int64_t rows) {
  SPCT_CHECK(num_responses.ndim() == 1 && num_responses.shape(0) == rows,
        "num_responses must have one entry per row (" + std::to_string(rows) + ")");
  const int64_t* nr = num_responses.data();
  for (int64_t r = 0; r < rows; ++r) {
    SPCT_CHECK(nr[r] >= 1, "num_responses must be >= 1, got " + std::to_string(nr[r]) + " at row " + std::to_string(r));
  }
}

// Parse rows of `text` and pack the results as numpy arrays:
// (text, row_offsets, scores, valid, principle_span, critique_span, item_counts, item_spans, item_weights).
py::tuple parse(py::array_t<uint8_t> text, CArray<int64_t> row_offsets, const CArray<int64_t>& num_responses,
                double lo, double hi) {
  const int64_t rows = row_offsets.shape(0) - 1;
  const int64_t* nr = num_responses.data();
  int64_t n_max = 0;
  for (int64_t r = 0; r < rows; ++r) n_max = std::max(n_max, nr[r]);
  auto scores = empty<float>({rows, n_max});
  auto valid = empty<bool>({rows});
  auto pspan = empty<int64_t>({rows, 2});
  auto cspan = empty<int64_t>({rows, 2});
  spct::cpu::ParseOutput out{scores.mutable_data(), reinterpret_cast<uint8_t*>(valid.mutable_data()),
                             pspan.mutable_data(), cspan.mutable_data(), n_max, {}};
  {
    py::gil_scoped_release nogil;
    spct::cpu::parse_rows(text.data(), row_offsets.data(), rows, nr, lo, hi, &out);
  }
  int64_t total = 0;
  for (const auto& items : out.items) total += static_cast<int64_t>(items.size());
  auto counts = empty<int64_t>({rows});
  auto spans = empty<int64_t>({total, 2});
  auto weights = empty<double>({total});
  int64_t* c = counts.mutable_data();
  int64_t* sp = spans.mutable_data();
  double* w = weights.mutable_data();
  for (int64_t r = 0; r < rows; ++r) {
    c[r] = static_cast<int64_t>(out.items[r].size());
    for (const auto& it : out.items[r]) {
      *sp++ = it.name_begin;
      *sp++ = it.name_end;
      *w++ = it.weight;
    }
  }
  return py::make_tuple(text, row_offsets, scores, valid, pspan, cspan, counts, spans, weights);
}

py::tuple extract_text(const CArray<uint8_t>& text, const CArray<int64_t>& row_offsets,
                       const CArray<int64_t>& num_responses, double lo, double hi) {
  SPCT_CHECK(text.ndim() == 1 && row_offsets.ndim() == 1 && row_offsets.shape(0) >= 1,
        "text must be 1-D bytes and row_offsets 1-D with N + 1 entries");
  const int64_t rows = row_offsets.shape(0) - 1;
  const int64_t* off = row_offsets.data();
  SPCT_CHECK(off[0] == 0 && off[rows] == text.shape(0), "row_offsets must start at 0 and end at len(text)");
  for (int64_t r = 0; r < rows; ++r) SPCT_CHECK(off[r] <= off[r + 1], "row_offsets must not decrease");
  check_num_responses(num_responses, rows);
  return parse(text, row_offsets, num_responses, lo, hi);
}

spct::cpu::TokenTable make_table(const CArray<uint8_t>& bytes, const CArray<int64_t>& offsets, bool strip) {
  SPCT_CHECK(bytes.ndim() == 1 && offsets.ndim() == 1 && offsets.shape(0) >= 1, "malformed token byte table");
  const int64_t vocab = offsets.shape(0) - 1;
  const int64_t* o = offsets.data();
  SPCT_CHECK(o[0] == 0 && o[vocab] == bytes.shape(0), "token byte table offsets must span the byte buffer");
  for (int64_t t = 0; t < vocab; ++t) SPCT_CHECK(o[t] <= o[t + 1], "token byte table offsets must not decrease");
  return spct::cpu::TokenTable{bytes.data(), o, vocab, strip};
}

py::tuple extract_tokens(const py::array& ids, const CArray<int64_t>& lengths, const CArray<uint8_t>& table_bytes,
                         const CArray<int64_t>& table_offsets, bool strip_leading_space,
                         const CArray<int64_t>& num_responses, double lo, double hi) {
  const bool is64 = ids.dtype().is(py::dtype::of<int64_t>());
  SPCT_CHECK(is64 || ids.dtype().is(py::dtype::of<int32_t>()), "token_ids must be int32 or int64");
  SPCT_CHECK(ids.ndim() == 2, "token_ids must be 2-D (N, T)");
  const int64_t rows = ids.shape(0), cols = ids.shape(1);
  const py::ssize_t item = ids.itemsize();
  SPCT_CHECK(rows == 0 || cols == 0 || (ids.strides(1) == item && ids.strides(0) % item == 0 && ids.strides(0) >= 0),
        "token_ids rows must be contiguous");
  SPCT_CHECK(lengths.ndim() == 1 && lengths.shape(0) == rows, "lengths must have shape (N,)");
  const int64_t* len = lengths.data();
  for (int64_t r = 0; r < rows; ++r) {
    SPCT_CHECK(len[r] >= 0 && len[r] <= cols, "lengths[" + std::to_string(r) + "] = " + std::to_string(len[r]) +
                                             " is outside [0, T = " + std::to_string(cols) + "]");
  }
  check_num_responses(num_responses, rows);
  spct::cpu::TokenTable table = make_table(table_bytes, table_offsets, strip_leading_space);
  spct::cpu::TokenIds tok{ids.data(), is64, rows, cols, ids.strides(0) / static_cast<int64_t>(ids.itemsize()), len};

  auto row_offsets = empty<int64_t>({rows + 1});
  int64_t* off = row_offsets.mutable_data();
  spct::cpu::Detokenizer detok;
  spct::cpu::BadToken bad;
  {
    py::gil_scoped_release nogil;
    bad = detok.run(tok, table, off);
  }
  if (bad.row >= 0) {
    throw py::value_error("token id " + std::to_string(bad.id) + " at row " + std::to_string(bad.row) +
                          ", position " + std::to_string(bad.col) + " is outside the vocabulary [0, " +
                          std::to_string(table.vocab) + ")");
  }
  auto text = empty<uint8_t>({off[rows]});
  {
    py::gil_scoped_release nogil;
    detok.gather(text.mutable_data());
  }
  return parse(text, row_offsets, num_responses, lo, hi);
}

#if defined(SPCT_WITH_CUDA)
// CUDA entry points: every buffer is a device pointer (int) owned by torch on the Python side.
// tokens: (ids, is_int64, rows, cols, row_stride, lengths, table_bytes, table_offsets, vocab, strip_leading_space)
spct::cuda::DeviceTokens device_tokens(const py::tuple& t) {
  SPCT_CHECK(t.size() == 10, "device tokens tuple must have 10 fields");
  return spct::cuda::DeviceTokens{dptr<const void>(t[0].cast<uintptr_t>()), t[1].cast<bool>(),
                                  t[2].cast<int64_t>(), t[3].cast<int64_t>(), t[4].cast<int64_t>(),
                                  dptr<const int64_t>(t[5].cast<uintptr_t>()),
                                  dptr<const uint8_t>(t[6].cast<uintptr_t>()),
                                  dptr<const int64_t>(t[7].cast<uintptr_t>()), t[8].cast<int64_t>(),
                                  t[9].cast<bool>()};
}

void bind_cuda(py::module_& m) {
  m.def("extract_sizes_cuda", [](const py::tuple& tokens, uintptr_t row_bytes, uintptr_t bad, uintptr_t stream) {
    cuda_check(spct::cuda::launch_sizes(device_tokens(tokens), dptr<int64_t>(row_bytes),
                                        dptr<unsigned long long>(bad), dptr<void>(stream)));
  });
  m.def("extract_parse_cuda", [](const py::tuple& tokens, uintptr_t row_offsets, uintptr_t text,
                                 uintptr_t num_responses, int64_t n_max, double lo, double hi, uintptr_t scores,
                                 uintptr_t valid, uintptr_t pspan, uintptr_t cspan, uintptr_t counts,
                                 uintptr_t slow, uintptr_t stream) {
    spct::cuda::DeviceParse out{dptr<const int64_t>(row_offsets), dptr<uint8_t>(text),
                                dptr<const int64_t>(num_responses), n_max, lo, hi, dptr<float>(scores),
                                dptr<bool>(valid), dptr<int64_t>(pspan), dptr<int64_t>(cspan),
                                dptr<int64_t>(counts), dptr<int32_t>(slow)};
    cuda_check(spct::cuda::launch_parse(device_tokens(tokens), out, dptr<void>(stream)));
  });
  m.def("extract_items_cuda", [](uintptr_t row_offsets, uintptr_t text, uintptr_t pspan, uintptr_t item_starts,
                                 int64_t rows, uintptr_t item_spans, uintptr_t item_weights, uintptr_t stream) {
    cuda_check(spct::cuda::launch_items(dptr<const int64_t>(row_offsets), dptr<const uint8_t>(text),
                                        dptr<const int64_t>(pspan), dptr<const int64_t>(item_starts), rows,
                                        dptr<int64_t>(item_spans), dptr<double>(item_weights),
                                        dptr<void>(stream)));
  });
}
#endif

}  // namespace

void bind_extract_scores(py::module_& m) {
  m.def("extract_text", &extract_text, py::arg("text"), py::arg("row_offsets"), py::arg("num_responses"),
        py::arg("lo"), py::arg("hi"),
        "Parse N generations given as one byte buffer and row offsets (N + 1,).");
  m.def("extract_tokens", &extract_tokens, py::arg("token_ids"), py::arg("lengths"), py::arg("table_bytes"),
        py::arg("table_offsets"), py::arg("strip_leading_space"), py::arg("num_responses"), py::arg("lo"),
        py::arg("hi"), "Detokenize (N, T) token ids with a byte table and parse each row.");
#if defined(SPCT_WITH_CUDA)
  bind_cuda(m);
#endif
}

}  // namespace spct_bind
