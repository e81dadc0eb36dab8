// The one pybind11 module of spct. Host buffers come in as numpy arrays (zero-copy views of torch tensors),
// device buffers as integer pointers plus the CUDA stream. Nothing here links libtorch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <stdexcept>
#include <string>

#include "spct/extract_cpu.h"
#include "spct/gemm.h"
#include "spct/prefix_attention.h"
#include "spct/sample.h"
#include "spct/score_grammar.h"
#include "spct/vote_cpu.h"
#if defined(SPCT_WITH_CUDA)
#include "spct/extract_cuda.h"
#endif

namespace py = pybind11;

namespace {

template <typename T>
using CArray = py::array_t<T, py::array::c_style | py::array::forcecast>;

[[noreturn]] void fail(const std::string& msg) { throw py::value_error(msg); }

// Builds the message only on failure: checks run once per row or per vocabulary entry.
#define SPCT_CHECK(cond, msg) \
  do {                        \
    if (!(cond)) fail(msg);   \
  } while (0)

template <typename T>
py::array_t<T> empty(std::initializer_list<py::ssize_t> shape) {
  return py::array_t<T>(std::vector<py::ssize_t>(shape));
}

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
void cuda_check(const std::string& err) {
  if (!err.empty()) throw std::runtime_error("spct CUDA kernel failed: " + err);
}

template <typename T>
T* dptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

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

// ---- vote ----------------------------------------------------------------------------------------------
py::tuple vote_cpu(const CArray<float>& scores, const CArray<bool>& valid, const std::optional<CArray<int64_t>>& perm,
                   const std::optional<CArray<float>>& meta, int64_t k_meta,
                   const std::optional<CArray<int64_t>>& num_responses, uint64_t seed) {
  SPCT_CHECK(scores.ndim() == 3, "scores must be (B, k, n)");
  const int64_t items = scores.shape(0), k = scores.shape(1), n = scores.shape(2);
  SPCT_CHECK(valid.ndim() == 2 && valid.shape(0) == items && valid.shape(1) == k, "valid must be (B, k)");
  SPCT_CHECK(!meta || (meta->ndim() == 2 && meta->shape(0) == items && meta->shape(1) == k),
             "meta_scores must be (B, k)");
  SPCT_CHECK(!num_responses || (num_responses->ndim() == 1 && num_responses->shape(0) == items),
             "num_responses must be (B,)");
  const int64_t* nr = num_responses ? num_responses->data() : nullptr;
  for (int64_t i = 0; nr != nullptr && i < items; ++i) {
    SPCT_CHECK(nr[i] >= 1 && nr[i] <= n, "num_responses[" + std::to_string(i) + "] = " + std::to_string(nr[i]) +
                                             " is outside [1, n = " + std::to_string(n) + "]");
  }
  SPCT_CHECK(!perm || (perm->ndim() == 3 && perm->shape(0) == items && perm->shape(1) == k && perm->shape(2) == n),
             "perm must be (B, k, n)");
  spct::VoteBatch batch{scores.data(), reinterpret_cast<const uint8_t*>(valid.data()),
                        perm ? perm->data() : nullptr, meta ? meta->data() : nullptr, nr, items, k, n, k_meta, seed};
  auto rewards = empty<float>({items, n});
  auto used = empty<int32_t>({items});
  auto best = empty<int64_t>({items});
  std::string error;
  {
    py::gil_scoped_release nogil;
    error = spct::cpu::vote(batch, rewards.mutable_data(), used.mutable_data(), best.mutable_data());
  }
  if (!error.empty()) fail(error);
  return py::make_tuple(rewards, used, best);
}

void bind_vote(py::module_& m) {
  m.def("vote", &vote_cpu, py::arg("scores"), py::arg("valid"), py::arg("perm"), py::arg("meta_scores"),
        py::arg("k_meta"), py::arg("num_responses"), py::arg("seed"),
        "Voting over k samples per item: (rewards (B, n), num_used (B,), best (B,)). k_meta <= 0: all valid.");
#if defined(SPCT_WITH_CUDA)
  m.def("vote_cuda", [](uintptr_t scores, uintptr_t valid, uintptr_t perm, uintptr_t meta, uintptr_t num_responses,
                        int64_t items, int64_t k, int64_t n, int64_t k_meta, uint64_t seed, uintptr_t rewards,
                        uintptr_t used, uintptr_t best, uintptr_t stream) {
    spct::VoteBatch batch{dptr<const float>(scores), dptr<const uint8_t>(valid), dptr<const int64_t>(perm),
                          dptr<const float>(meta), dptr<const int64_t>(num_responses), items, k, n, k_meta, seed};
    cuda_check(spct::cuda::vote(batch, dptr<float>(rewards), dptr<int32_t>(used), dptr<int64_t>(best),
                                dptr<void>(stream)));
  });
#endif
}
// ---- end vote --------------------------------------------------------------------------------------------

// ---- sample --------------------------------------------------------------------------------------------

spct::sample::Params sample_params(int64_t rows, const CArray<float>& temperature, const CArray<int64_t>& top_k,
                                   const CArray<float>& top_p, const CArray<float>& min_p,
                                   const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  auto check = [rows](const py::array& a, const char* name) {
    SPCT_CHECK(a.ndim() == 1 && a.shape(0) == rows,
               std::string(name) + " must have shape (N,) with N = " + std::to_string(rows));
  };
  check(temperature, "temperature");
  check(top_k, "top_k");
  check(top_p, "top_p");
  check(min_p, "min_p");
  check(seed, "seed");
  check(offset, "offset");
  return {temperature.data(), top_k.data(), top_p.data(), min_p.data(), seed.data(), offset.data()};
}

// logits: (N, V) float32, or bfloat16 as its 16-bit pattern (int16/uint16) with bf16 = true; unit stride along
// V. returns (tokens (N,) int64, status (N,) int32).
py::tuple sample_cpu(const py::array& logits, bool bf16, const CArray<float>& temperature,
                     const CArray<int64_t>& top_k, const CArray<float>& top_p, const CArray<float>& min_p,
                     const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  const py::ssize_t item = bf16 ? 2 : 4;
  const bool dtype_ok = bf16 ? (logits.dtype().is(py::dtype::of<int16_t>()) ||
                                logits.dtype().is(py::dtype::of<uint16_t>()))
                             : logits.dtype().is(py::dtype::of<float>());
  SPCT_CHECK(dtype_ok, bf16 ? "bfloat16 logits must come as int16/uint16 bits" : "logits must be float32");
  SPCT_CHECK(logits.ndim() == 2, "logits must be 2-D (N, V)");
  const int64_t rows = logits.shape(0), vocab = logits.shape(1);
  SPCT_CHECK(rows == 0 || vocab <= 1 || logits.strides(1) == item, "logits rows must be contiguous");
  SPCT_CHECK(logits.strides(0) % item == 0 && logits.strides(0) >= 0, "logits row stride must be non-negative");
  SPCT_CHECK(vocab < (int64_t(1) << 31), "the vocabulary must have fewer than 2^31 tokens");
  const spct::sample::Params params = sample_params(rows, temperature, top_k, top_p, min_p, seed, offset);
  auto tokens = empty<int64_t>({rows});
  auto status = empty<int32_t>({rows});
  {
    py::gil_scoped_release nogil;
    spct::cpu::sample_rows(logits.data(), bf16, rows, vocab, logits.strides(0) / item, params,
                           tokens.mutable_data(), status.mutable_data());
  }
  return py::make_tuple(tokens, status);
}

py::array_t<float> philox_uniform_cpu(const CArray<int64_t>& seed, const CArray<int64_t>& offset) {
  SPCT_CHECK(seed.ndim() == 1 && offset.ndim() == 1 && seed.shape(0) == offset.shape(0),
             "seed and offset must be 1-D of one length");
  const int64_t n = seed.shape(0);
  auto out = empty<float>({n});
  {
    py::gil_scoped_release nogil;
    spct::cpu::philox_uniform(seed.data(), offset.data(), n, out.mutable_data());
  }
  return out;
}

void bind_sample(py::module_& m) {
  m.def("sample", &sample_cpu, py::arg("logits"), py::arg("bf16"), py::arg("temperature"), py::arg("top_k"),
        py::arg("top_p"), py::arg("min_p"), py::arg("seed"), py::arg("offset"),
        "Sample one token per row of (N, V) logits; returns (tokens (N,) int64, status (N,) int32).");
  m.def("philox_uniform", &philox_uniform_cpu, py::arg("seed"), py::arg("offset"),
        "The sampler's uniforms (N,) float32 for per-row seed and offset (N,) int64.");
  m.def("philox4x32", [](const py::sequence& counter, const py::sequence& key) {
    SPCT_CHECK(counter.size() == 4 && key.size() == 2, "philox4x32 takes a counter of 4 words and a key of 2");
    uint32_t c[4], k[2], out[4];
    for (int i = 0; i < 4; ++i) c[i] = counter[i].cast<uint32_t>();
    for (int i = 0; i < 2; ++i) k[i] = key[i].cast<uint32_t>();
    spct::philox::philox4x32_10(c, k, out);
    return py::make_tuple(out[0], out[1], out[2], out[3]);
  }, py::arg("counter"), py::arg("key"), "Philox4x32-10 of one counter (4 words) and key (2 words).");
  m.def("sample_exp_weight", [](const CArray<float>& z) {
    auto out = empty<float>({z.size()});
    spct::cpu::exp_weights(z.data(), z.size(), out.mutable_data());
    return out;
  }, py::arg("z"), "exp as the sampler computes its weights (flattened), for the bitwise cross-backend tests.");
#if defined(SPCT_WITH_CUDA)
  m.def("sample_cuda", [](uintptr_t logits, bool bf16, int64_t rows, int64_t vocab, int64_t row_stride,
                          const py::tuple& params, uintptr_t tokens, uintptr_t status, uintptr_t stream) {
    SPCT_CHECK(params.size() == 6, "params: (temperature, top_k, top_p, min_p, seed, offset) device pointers");
    const spct::sample::Params p{dptr<const float>(params[0].cast<uintptr_t>()),
                                 dptr<const int64_t>(params[1].cast<uintptr_t>()),
                                 dptr<const float>(params[2].cast<uintptr_t>()),
                                 dptr<const float>(params[3].cast<uintptr_t>()),
                                 dptr<const int64_t>(params[4].cast<uintptr_t>()),
                                 dptr<const int64_t>(params[5].cast<uintptr_t>())};
    cuda_check(spct::cuda::launch_sample(dptr<const void>(logits), bf16, rows, vocab, row_stride, p,
                                         dptr<int64_t>(tokens), dptr<int32_t>(status), dptr<void>(stream)));
  });
  m.def("philox_uniform_cuda", [](uintptr_t seed, uintptr_t offset, int64_t n, uintptr_t out, uintptr_t stream) {
    cuda_check(spct::cuda::launch_philox_uniform(dptr<const int64_t>(seed), dptr<const int64_t>(offset), n,
                                                 dptr<float>(out), dptr<void>(stream)));
  });
#endif
}
// ---- end sample ----------------------------------------------------------------------------------------

// ---- prefix_attention ------------------------------------------------------------------------------------

// Host tensors come as addresses: the op runs 30+ times per decoding step, and the Python wrapper has already
// checked dtypes, shapes and contiguity (the kernel checks the index values).
spct::attn::PrefixAttention prefix_args(uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t prefix_indptr,
                                        uintptr_t prefix_index, uintptr_t own_k, uintptr_t own_v, uintptr_t own_index,
                                        uintptr_t own_len, uintptr_t out, const std::vector<int64_t>& sizes,
                                        float scale, bool bf16) {
  SPCT_CHECK(sizes.size() == 8, "sizes must be (rows, heads, kv_heads, head_dim, prompts, prefix_tokens, slots, "
                                "capacity)");
  const auto cptr = [](uintptr_t a) { return reinterpret_cast<const void*>(a); };
  const auto iptr = [](uintptr_t a) { return reinterpret_cast<const int64_t*>(a); };
  return {cptr(q), cptr(prefix_k), cptr(prefix_v), iptr(prefix_indptr), iptr(prefix_index), cptr(own_k), cptr(own_v),
          iptr(own_index), iptr(own_len), reinterpret_cast<void*>(out), sizes[0], sizes[1], sizes[2], sizes[3],
          sizes[4], sizes[5], sizes[6], sizes[7], scale, bf16};
}

void bind_prefix_attention(py::module_& m) {
  m.def(
      "prefix_attention",
      [](uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t prefix_indptr, uintptr_t prefix_index,
         uintptr_t own_k, uintptr_t own_v, uintptr_t own_index, uintptr_t own_len, uintptr_t out,
         const std::vector<int64_t>& sizes, float scale, bool bf16) {
        const spct::attn::PrefixAttention a = prefix_args(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k,
                                                          own_v, own_index, own_len, out, sizes, scale, bf16);
        std::string error;
        {
          py::gil_scoped_release nogil;
          error = spct::cpu::prefix_attention(a);
        }
        if (!error.empty()) fail(error);
      },
      py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("prefix_indptr"), py::arg("prefix_index"),
      py::arg("own_k"), py::arg("own_v"), py::arg("own_index"), py::arg("own_len"), py::arg("out"), py::arg("sizes"),
      py::arg("scale"), py::arg("bf16"),
      "Decode attention over a shared prompt KV plus each row's own KV (host addresses; see prefix_attention.h).");
#if defined(SPCT_WITH_CUDA)
  // Device addresses; the Python wrapper has checked the index values too (the kernel trusts them).
  m.def(
      "prefix_attention_cuda",
      [](uintptr_t q, uintptr_t prefix_k, uintptr_t prefix_v, uintptr_t prefix_indptr, uintptr_t prefix_index,
         uintptr_t own_k, uintptr_t own_v, uintptr_t own_index, uintptr_t own_len, uintptr_t out,
         const std::vector<int64_t>& sizes, float scale, bool bf16, uintptr_t stream) {
        const spct::attn::PrefixAttention a = prefix_args(q, prefix_k, prefix_v, prefix_indptr, prefix_index, own_k,
                                                          own_v, own_index, own_len, out, sizes, scale, bf16);
        const int64_t dim = a.head_dim;
        SPCT_CHECK(dim == 32 || dim == 64 || dim == 128 || dim == 256,
                   "head_dim " + std::to_string(dim) + " has no CUDA kernel (built: 32, 64, 128, 256)");
        SPCT_CHECK(a.kv_heads > 0 && a.heads % a.kv_heads == 0,
                   "heads (" + std::to_string(a.heads) + ") must be a multiple of kv_heads (" +
                       std::to_string(a.kv_heads) + ")");
        cuda_check(spct::cuda::prefix_attention(a, dptr<void>(stream)));
      },
      py::arg("q"), py::arg("prefix_k"), py::arg("prefix_v"), py::arg("prefix_indptr"), py::arg("prefix_index"),
      py::arg("own_k"), py::arg("own_v"), py::arg("own_index"), py::arg("own_len"), py::arg("out"), py::arg("sizes"),
      py::arg("scale"), py::arg("bf16"), py::arg("stream"),
      "prefix_attention on device addresses, launched on `stream` (index values already checked).");
#endif
}
// ---- end prefix_attention --------------------------------------------------------------------------------

// ---- gemm_bf16 -------------------------------------------------------------------------------------------

void bind_gemm(py::module_& m) {
#if defined(SPCT_X86_VARIANTS)
  m.def("gemm_bf16_supported", &spct::cpu::gemm_bf16_supported, "True when the CPU has AVX-512 BF16.");
  m.def(
      "gemm_bf16",
      [](uintptr_t x, int64_t rows, int64_t k, uintptr_t packed, int64_t n, uintptr_t bias, uintptr_t y) {
        SPCT_CHECK(spct::cpu::gemm_bf16_supported(), "gemm_bf16 needs AVX-512 BF16");
        SPCT_CHECK(n % 16 == 0 && k % 2 == 0 && rows >= 0, "gemm_bf16 needs N % 16 == 0 and an even K");
        const auto p = [](uintptr_t a) { return reinterpret_cast<const uint16_t*>(a); };
        py::gil_scoped_release nogil;
        spct::cpu::gemm_bf16(p(x), rows, k, p(packed), n, p(bias), reinterpret_cast<uint16_t*>(y));
      },
      py::arg("x"), py::arg("rows"), py::arg("k"), py::arg("packed"), py::arg("n"), py::arg("bias"), py::arg("y"),
      "y (M, N) = x (M, K) W^T (+ bias) in bfloat16 with W packed (spct/gemm.h); host addresses.");
#else
  m.def("gemm_bf16_supported", []() { return false; }, "True when the CPU has AVX-512 BF16.");
#endif
}
// ---- end gemm_bf16 ---------------------------------------------------------------------------------------

// ---- score_group ------------------------------------------------------------------------------------------

void check_table(const CArray<uint8_t>& data, const CArray<int64_t>& offsets) {
  SPCT_CHECK(offsets.ndim() == 1 && offsets.shape(0) >= 1, "offsets must be 1-D with vocab + 1 entries");
  SPCT_CHECK(data.ndim() == 1, "data must be 1-D");
  const int64_t* off = offsets.data();
  SPCT_CHECK(off[0] == 0 && off[offsets.shape(0) - 1] == data.shape(0), "offsets must start at 0 and end at len(data)");
}

// Token t's bytes lie inside data (checked per token used, so a call costs what it reads).
void check_token(const CArray<int64_t>& offsets, int64_t t, const char* what) {
  const int64_t vocab = offsets.shape(0) - 1;
  SPCT_CHECK(0 <= t && t < vocab, std::string(what) + " token id " + std::to_string(t) + " outside [0, " +
                                      std::to_string(vocab) + ")");
  const int64_t* off = offsets.data();
  SPCT_CHECK(0 <= off[t] && off[t] <= off[t + 1] && off[t + 1] <= off[vocab],
             "offsets of token " + std::to_string(t) + " are out of order");
}

void bind_score_group(py::module_& m) {
  m.def(
      "score_group_candidates",
      [](const CArray<uint8_t>& data, const CArray<int64_t>& offsets) {
        check_table(data, offsets);
        const int64_t vocab = offsets.shape(0) - 1;
        for (int64_t t = 0; t < vocab; ++t) check_token(offsets, t, "table");
        std::vector<int32_t> ids = spct::cpu::score_group_candidates(data.data(), offsets.data(), vocab);
        py::array_t<int32_t> out(static_cast<py::ssize_t>(ids.size()));
        std::copy(ids.begin(), ids.end(), out.mutable_data());
        return out;
      },
      py::arg("data"), py::arg("offsets"),
      "Ids of the non-empty tokens made only of digits, ',', ' ' and '}' (spct/score_grammar.h).");
  m.def(
      "score_group_allowed",
      [](const CArray<uint8_t>& data, const CArray<int64_t>& offsets, const CArray<int32_t>& candidates,
         const CArray<int64_t>& group, int64_t n, int64_t lo, int64_t hi) {
        check_table(data, offsets);
        SPCT_CHECK(candidates.ndim() == 1 && group.ndim() == 1, "candidates and group must be 1-D");
        SPCT_CHECK(n >= 1, "n must be >= 1, got " + std::to_string(n));
        SPCT_CHECK(0 <= lo && lo <= hi && hi < 1000000000000000000LL,
                   "need 0 <= lo <= hi < 10**18, got lo = " + std::to_string(lo) + ", hi = " + std::to_string(hi));
        for (int64_t i = 0; i < group.shape(0); ++i) check_token(offsets, group.data()[i], "group");
        for (int64_t i = 0; i < candidates.shape(0); ++i) check_token(offsets, candidates.data()[i], "candidate");
        spct::cpu::ScoreGroupResult r;
        {
          py::gil_scoped_release nogil;
          r = spct::cpu::score_group_allowed(data.data(), offsets.data(), candidates.data(), candidates.shape(0),
                                             group.data(), group.shape(0), n, lo, hi);
        }
        py::array_t<int32_t> allowed(static_cast<py::ssize_t>(r.allowed.size()));
        std::copy(r.allowed.begin(), r.allowed.end(), allowed.mutable_data());
        return py::make_tuple(allowed, r.viable, r.closed);
      },
      py::arg("data"), py::arg("offsets"), py::arg("candidates"), py::arg("group"), py::arg("n"), py::arg("lo"),
      py::arg("hi"),
      "(allowed token ids, viable, closed) for a score group of n integers in [lo, hi] (spct/score_grammar.h).");
}
// ---- end score_group --------------------------------------------------------------------------------------

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "spct native kernels (C++/OpenMP and CUDA), free of libtorch";
  m.def("extract_text", &extract_text, py::arg("text"), py::arg("row_offsets"), py::arg("num_responses"),
        py::arg("lo"), py::arg("hi"),
        "Parse N generations given as one byte buffer and row offsets (N + 1,).");
  m.def("extract_tokens", &extract_tokens, py::arg("token_ids"), py::arg("lengths"), py::arg("table_bytes"),
        py::arg("table_offsets"), py::arg("strip_leading_space"), py::arg("num_responses"), py::arg("lo"),
        py::arg("hi"), "Detokenize (N, T) token ids with a byte table and parse each row.");
  bind_vote(m);
  bind_sample(m);
  bind_prefix_attention(m);
  bind_gemm(m);
  bind_score_group(m);
#if defined(SPCT_WITH_CUDA)
  m.attr("has_cuda") = true;
  bind_cuda(m);
#else
  m.attr("has_cuda") = false;
#endif
}
