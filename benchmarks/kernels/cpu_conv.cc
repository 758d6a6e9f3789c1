// Direct NHWC convolution for x86-64 CPUs with AVX-512, as an XLA FFI handler.
//
// y[n, oh, ow, co] = relu?(bias[co] + sum_{kh, kw, ci} x[n, oh*s + kh*d - pt, ow*s + kw*d - pl, ci]
//                                                      * w[kh, kw, ci, co]
//                           + residual?[n, oh, ow, co])
// with zeros outside x (zero padding), or with x wrapped around (circular padding: indices
// modulo H and W). Float32 in and out, accumulation in float32 in the
// order kh, kw, ci; the residual (a ResNet block's shortcut) and the ReLU are applied in
// registers before the store, as oneDNN's post-ops.
//
// Why: XLA's CPU convolution (Eigen) runs narrow convolutions (16-64 channels, the CIFAR ResNets)
// at about half the rate of oneDNN's direct kernels, which PyTorch uses. This is the same
// scheme as those kernels: a register tile of TW output pixels x (16 * OCB) output channels
// stays in AVX-512 registers while the loops over the taps and input channels run, each weight
// vector loaded once per tile and each input value broadcast once per tile row.
//
// Work is split over output rows (n, oh) between the calling thread and the tasks it schedules
// on XLA's intra-op thread pool; each row is independent, so results do not depend on the
// thread count. Built by benchmarks/kernels/cpu_conv.py (g++, at first use); see that file.

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <memory>
#include <new>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int kLanes = 16;   // float32 lanes of a 512-bit register
constexpr int kMaxRows = 16;  // largest kernel height handled (row pointers on the stack)
// Pixels per work item of a pointwise conv: a multiple of every tile width (24, 12, 8, 6), so
// that its pixels, taken as one flat row, split into full register tiles.
constexpr int64_t kFlatRow = 48;

struct Geometry {
  int64_t n, h, w, cin;    // input
  int64_t kh, kw, cout;    // kernel
  int64_t oh, ow;          // output
  int64_t stride, dilation, pad_top, pad_left;
  bool relu;
  bool circular;           // padding wraps around (else zeros)
  int64_t padded_w;        // columns of one padded input row: (ow - 1) * s + (kw - 1) * d + 1
  bool needs_row_copy;     // horizontal zero padding: rows are copied into a padded buffer
  int64_t last_width;      // output pixels of the last row of each image (ow but when flat)
};

// One register tile: TW consecutive output pixels of one row x OCB blocks of 16 channels.
// rows[k]: the input row of tap row k, already offset to the tile's first pixel (nullptr when
// that row lies in the zero padding). w: the kernel at the tile's first output channel. res:
// the residual at the tile's first output (nullptr: none), laid out as y.
template <int OCB, int TW>
__attribute__((target("avx512f,fma"))) void Tile(const float* const* rows, const Geometry& g,
                                                  const float* w, const float* bias,
                                                  const float* res, float* y) {
  __m512 acc[TW][OCB];
#pragma GCC unroll 8
  for (int o = 0; o < OCB; ++o) {
    const __m512 b = _mm512_loadu_ps(bias + o * kLanes);
#pragma GCC unroll 32
    for (int j = 0; j < TW; ++j) acc[j][o] = b;
  }
  const int64_t pixel_step = g.stride * g.cin;  // floats between neighbouring output pixels
  const int64_t tap_step = g.dilation * g.cin;  // floats between neighbouring kernel columns
  for (int64_t r = 0; r < g.kh; ++r) {
    const float* row = rows[r];
    if (row == nullptr) continue;  // the whole tap row is zero padding
    for (int64_t c = 0; c < g.kw; ++c) {
      const float* xp = row + c * tap_step;
      const float* wp = w + (r * g.kw + c) * g.cin * g.cout;
      for (int64_t ci = 0; ci < g.cin; ++ci) {
        __m512 wv[OCB];
#pragma GCC unroll 8
        for (int o = 0; o < OCB; ++o) wv[o] = _mm512_loadu_ps(wp + ci * g.cout + o * kLanes);
#pragma GCC unroll 32
        for (int j = 0; j < TW; ++j) {
          const __m512 xv = _mm512_set1_ps(xp[j * pixel_step + ci]);
#pragma GCC unroll 8
          for (int o = 0; o < OCB; ++o) acc[j][o] = _mm512_fmadd_ps(xv, wv[o], acc[j][o]);
        }
      }
    }
  }
  const __m512 zero = _mm512_setzero_ps();
#pragma GCC unroll 32
  for (int j = 0; j < TW; ++j) {
#pragma GCC unroll 8
    for (int o = 0; o < OCB; ++o) {
      __m512 v = acc[j][o];
      if (res != nullptr) v = _mm512_add_ps(v, _mm512_loadu_ps(res + j * g.cout + o * kLanes));
      if (g.relu) v = _mm512_max_ps(v, zero);
      _mm512_storeu_ps(y + j * g.cout + o * kLanes, v);
    }
  }
}

using TileFn = void (*)(const float* const*, const Geometry&, const float*, const float*,
                        const float*, float*);

// Register budget (32 zmm): TW * OCB accumulators + OCB weights + 1 broadcast.
template <int OCB>
constexpr int kMaxTile = OCB == 1 ? 24 : OCB == 2 ? 12 : OCB == 3 ? 8 : 6;

template <int OCB, std::size_t... I>
constexpr std::array<TileFn, sizeof...(I)> TileTable(std::index_sequence<I...>) {
  return {&Tile<OCB, static_cast<int>(I) + 1>...};
}

template <int OCB>
const std::array<TileFn, kMaxTile<OCB>>& Tiles() {
  static constexpr auto table = TileTable<OCB>(std::make_index_sequence<kMaxTile<OCB>>{});
  return table;
}

// All tiles of one output row (ow pixels) with OCB-wide channel blocks.
template <int OCB>
void RowWithBlocks(const float* const* rows, const Geometry& g, int64_t ow, const float* w,
                   const float* bias, const float* res_row, float* y_row) {
  const auto& tiles = Tiles<OCB>();
  const int64_t max_tile = kMaxTile<OCB>;
  const int64_t num_tiles = (ow + max_tile - 1) / max_tile;
  const float* tile_rows[kMaxRows];
  for (int64_t co = 0; co < g.cout; co += OCB * kLanes) {
    int64_t ow0 = 0;
    for (int64_t t = 0; t < num_tiles; ++t) {
      // Near-equal tile widths (e.g. 32 = 16 + 16, not 24 + 8).
      const int64_t width = (ow - ow0) / (num_tiles - t);
      for (int64_t r = 0; r < g.kh; ++r) {
        tile_rows[r] = rows[r] == nullptr ? nullptr : rows[r] + ow0 * g.stride * g.cin;
      }
      const int64_t out = ow0 * g.cout + co;
      tiles[width - 1](tile_rows, g, w + co, bias + co,
                       res_row == nullptr ? nullptr : res_row + out, y_row + out);
      ow0 += width;
    }
  }
}

using RowFn = void (*)(const float* const*, const Geometry&, int64_t, const float*,
                       const float*, const float*, float*);

RowFn ChooseRow(int64_t cout) {
  const int64_t blocks = cout / kLanes;
  if (blocks % 4 == 0) return &RowWithBlocks<4>;
  if (blocks % 3 == 0) return &RowWithBlocks<3>;
  if (blocks % 2 == 0) return &RowWithBlocks<2>;
  return &RowWithBlocks<1>;
}

// Output row i = (n, oh): gathers its tap rows (copied with zero columns when padded) and runs
// the tiles. buffer: scratch of the calling worker.
void OutputRow(int64_t i, const Geometry& g, RowFn row_fn, const float* x, const float* w,
               const float* bias, const float* res, float* y, std::vector<float>& buffer) {
  const int64_t n = i / g.oh, oh = i % g.oh;
  const float* rows[kMaxRows];
  if (g.needs_row_copy) buffer.resize(g.kh * g.padded_w * g.cin);
  for (int64_t r = 0; r < g.kh; ++r) {
    int64_t ih = oh * g.stride + r * g.dilation - g.pad_top;
    if (g.circular) ih = (ih % g.h + g.h) % g.h;
    if (ih < 0 || ih >= g.h) {
      rows[r] = nullptr;
      continue;
    }
    const float* src = x + (n * g.h + ih) * g.w * g.cin;
    if (!g.needs_row_copy) {
      rows[r] = src;
      continue;
    }
    float* dst = buffer.data() + r * g.padded_w * g.cin;
    if (g.circular) {  // column c of the padded row is input column (c - pad_left) mod W
      for (int64_t c = 0; c < g.padded_w; ++c) {
        const int64_t iw = ((c - g.pad_left) % g.w + g.w) % g.w;
        std::copy(src + iw * g.cin, src + (iw + 1) * g.cin, dst + c * g.cin);
      }
      rows[r] = dst;
      continue;
    }
    const int64_t left = std::min(g.pad_left, g.padded_w);
    const int64_t inside = std::max<int64_t>(0, std::min(g.w, g.padded_w - g.pad_left));
    std::fill(dst, dst + left * g.cin, 0.0f);  // [0, left): zero padding
    if (inside > 0) std::copy(src, src + inside * g.cin, dst + g.pad_left * g.cin);
    // [left + inside, padded_w): zero padding (empty when the row is all left padding)
    std::fill(dst + (left + inside) * g.cin, dst + g.padded_w * g.cin, 0.0f);
    rows[r] = dst;
  }
  const int64_t out = i * g.ow * g.cout;
  const int64_t width = oh == g.oh - 1 ? g.last_width : g.ow;
  row_fn(rows, g, width, w, bias, res == nullptr ? nullptr : res + out, y + out);
}

struct Job {
  Geometry g;
  RowFn row_fn;
  const float *x, *w, *bias, *res;
  float* y;
  int64_t total;
  std::atomic<int64_t> next{0};
  std::atomic<int64_t> done{0};
  std::atomic<bool> failed{false};
  char error[256] = {};  // the first failure's message, read once every row is done

  void Fail(const char* what) noexcept {
    bool first = false;
    if (failed.compare_exchange_strong(first, true)) {
      std::snprintf(error, sizeof(error), "%s", what);
    }
  }
};

// Takes output rows until none is left; throws nothing (it runs on XLA's pool threads, where an
// exception would terminate the process). A row that throws (std::bad_alloc, std::length_error
// of its buffer) fails the job; the rows after it are skipped. Every row taken counts as done,
// so the caller's wait ends either way. Safe to run after the handler returned (a late task
// finds no row left and touches no buffer).
void Work(const std::shared_ptr<Job>& job) noexcept {
  std::vector<float> buffer;
  for (;;) {
    const int64_t i = job->next.fetch_add(1, std::memory_order_relaxed);
    if (i >= job->total) return;
    if (!job->failed.load(std::memory_order_relaxed)) {
      try {
        OutputRow(i, job->g, job->row_fn, job->x, job->w, job->bias, job->res, job->y, buffer);
      } catch (const std::exception& e) {
        job->Fail(e.what());
      } catch (...) {
        job->Fail("unknown exception");
      }
    }
    job->done.fetch_add(1, std::memory_order_release);
  }
}

// Runs the convolution; res: the residual input (nullptr: none), checked against y's shape.
ffi::Error Run(ffi::ThreadPool& pool, ffi::Buffer<ffi::F32>& x, ffi::Buffer<ffi::F32>& w,
               ffi::Buffer<ffi::F32>& bias, ffi::Buffer<ffi::F32>* res,
               ffi::ResultBuffer<ffi::F32>& y, int64_t stride, int64_t dilation, int64_t pad_top,
               int64_t pad_left, bool relu, bool circular) {
  const auto xd = x.dimensions(), wd = w.dimensions(), yd = y->dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4 || bias.dimensions().size() != 1) {
    return ffi::Error::InvalidArgument("shiftbench_conv2d: expects x, w, y of rank 4, bias 1");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2],
             stride, dilation, pad_top, pad_left, relu, circular, 0, false, yd[2]};
  if (wd[2] != g.cin || yd[0] != g.n || yd[3] != g.cout || bias.dimensions()[0] != g.cout ||
      g.cout % kLanes != 0 || g.kh > kMaxRows || stride < 1 || dilation < 1 || pad_top < 0 ||
      pad_left < 0) {
    return ffi::Error::InvalidArgument("shiftbench_conv2d: unsupported shapes or attributes");
  }
  if (g.kh < 1 || g.kw < 1) {  // kw = 0 would make the padded row width negative
    return ffi::Error::InvalidArgument("shiftbench_conv2d: w must be at least 1x1, got " +
                                       std::to_string(g.kh) + "x" + std::to_string(g.kw));
  }
  if (circular && (g.h == 0 || g.w == 0)) {
    return ffi::Error::InvalidArgument("shiftbench_conv2d: circular padding of an empty map");
  }
  if (res != nullptr) {
    const auto rd = res->dimensions();
    if (rd.size() != 4 || rd[0] != yd[0] || rd[1] != yd[1] || rd[2] != yd[2] || rd[3] != yd[3]) {
      return ffi::Error::InvalidArgument("shiftbench_conv2d: the residual must have y's shape");
    }
  }
  if (!__builtin_cpu_supports("avx512f") || !__builtin_cpu_supports("fma")) {
    return ffi::Error::InvalidArgument("shiftbench_conv2d: this CPU has no AVX-512F / FMA");
  }
  const int64_t pixels = g.n * g.oh * g.ow;
  if (pixels == 0) return ffi::Error::Success();
  if (g.kh == 1 && g.kw == 1 && stride == 1 && pad_top == 0 && pad_left == 0 && g.oh == g.h &&
      g.ow == g.w) {
    // Pointwise: every pixel is independent, so all images are one flat map of kFlatRow-pixel
    // rows (the last one shorter), whatever the map's own width (7 px rows waste tiles).
    g.n = 1;
    const int64_t rows = (pixels + kFlatRow - 1) / kFlatRow;
    g.w = g.ow = std::min(pixels, ((pixels + rows - 1) / rows + 5) / 6 * 6);  // near-equal rows
    g.h = g.oh = (pixels + g.ow - 1) / g.ow;
    g.last_width = pixels - (g.oh - 1) * g.ow;
  }
  g.padded_w = (g.ow - 1) * stride + (g.kw - 1) * dilation + 1;
  g.needs_row_copy = pad_left > 0 || g.padded_w > g.w;
  auto job = std::make_shared<Job>();
  job->g = g;
  job->row_fn = ChooseRow(g.cout);
  job->x = x.typed_data();
  job->w = w.typed_data();
  job->bias = bias.typed_data();
  job->res = res == nullptr ? nullptr : res->typed_data();
  job->y = y->typed_data();
  job->total = g.n * g.oh;
  const int64_t helpers = std::min<int64_t>(pool.num_threads(), job->total) - 1;
  try {
    for (int64_t t = 0; t < helpers; ++t) pool.Schedule([job] { Work(job); });
  } catch (const std::bad_alloc&) {  // no memory for another task: this thread does the rest
  }
  Work(job);
  while (job->done.load(std::memory_order_acquire) < job->total) std::this_thread::yield();
  if (job->failed.load(std::memory_order_relaxed)) {
    return ffi::Error::Internal(std::string("shiftbench_conv2d: ") + job->error);
  }
  return ffi::Error::Success();
}

// Run, with any exception it throws (before its work is scheduled) as an error: XLA calls the
// handlers through a C interface, which an exception must not cross.
template <typename F>
ffi::Error Guarded(F run) noexcept {
  try {
    return run();
  } catch (const std::exception& e) {
    return ffi::Error::Internal(std::string("shiftbench_conv2d: ") + e.what());
  } catch (...) {
    return ffi::Error::Internal("shiftbench_conv2d: unknown exception");
  }
}

ffi::Error Conv2d(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                  ffi::Buffer<ffi::F32> bias, ffi::ResultBuffer<ffi::F32> y, int64_t stride,
                  int64_t dilation, int64_t pad_top, int64_t pad_left, bool relu,
                  bool circular) {
  return Guarded([&] {
    return Run(pool, x, w, bias, nullptr, y, stride, dilation, pad_top, pad_left, relu, circular);
  });
}

ffi::Error Conv2dResidual(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> x, ffi::Buffer<ffi::F32> w,
                          ffi::Buffer<ffi::F32> bias, ffi::Buffer<ffi::F32> res,
                          ffi::ResultBuffer<ffi::F32> y, int64_t stride, int64_t dilation,
                          int64_t pad_top, int64_t pad_left, bool relu, bool circular) {
  return Guarded([&] {
    return Run(pool, x, w, bias, &res, y, stride, dilation, pad_top, pad_left, relu, circular);
  });
}

}  // namespace

namespace {

// x, w, bias (and, for the residual handler, the residual) come first; then y and the
// attributes, the same for both handlers.
auto Inputs() {
  return ffi::Ffi::Bind()
      .Ctx<ffi::ThreadPool>()
      .Arg<ffi::Buffer<ffi::F32>>()   // x
      .Arg<ffi::Buffer<ffi::F32>>()   // w
      .Arg<ffi::Buffer<ffi::F32>>();  // bias
}

template <typename Binding>
auto OutputAndAttrs(Binding binding) {
  return std::move(binding).template Ret<ffi::Buffer<ffi::F32>>()  // y
      .template Attr<int64_t>("stride")
      .template Attr<int64_t>("dilation")
      .template Attr<int64_t>("pad_top")
      .template Attr<int64_t>("pad_left")
      .template Attr<bool>("relu")
      .template Attr<bool>("circular");
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(ShiftbenchConv2d, Conv2d, OutputAndAttrs(Inputs()));

XLA_FFI_DEFINE_HANDLER_SYMBOL(ShiftbenchConv2dResidual, Conv2dResidual,
                              OutputAndAttrs(Inputs().Arg<ffi::Buffer<ffi::F32>>()));
