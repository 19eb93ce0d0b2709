// Fused CPU kernels for Conv-4's fast path (metalab.models.fast), compiled on first use by
// metalab.models.fast._kernels with torch.utils.cpp_extension. Each computes, in one or two passes
// over memory, what a chain of PyTorch ops computes in several; the Python side falls back to those
// ops when this file cannot be compiled. First derivatives only: a backward that must itself be
// differentiated (second-order MAML) goes through the plain PyTorch ops.
//
// Tensors are channels-last: an image batch is (n, h, w, c) in memory.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <algorithm>
#include <mutex>
#include <vector>

// The Python side (models/fast) passes contiguous tensors of one floating dtype; say so if not.
static void check(const torch::Tensor& t, const torch::Tensor& like, const char* name) {
  TORCH_CHECK(t.is_contiguous(), "metalab Conv-4 kernel: ", name, " must be contiguous");
  TORCH_CHECK(t.scalar_type() == like.scalar_type(), "metalab Conv-4 kernel: ", name, " has another dtype than the input");
}

// ---------------------------------------------------------------------------------------------
// Batch norm -> 2x2 max-pool -> ReLU (Conv-4 blocks 2-4), the pool taken before the norm's
// per-channel affine map (monotone; decreasing where the scale is negative: sign flips those).
// ---------------------------------------------------------------------------------------------

// Mean and biased variance per channel of y (n, h, w, c), accumulated in double about the first
// row's values (no cancellation for a channel far from 0).
std::vector<torch::Tensor> channel_stats(torch::Tensor y) {
  check(y, y, "y");
  auto n = y.size(0), h = y.size(1), w = y.size(2), c = y.size(3);
  int64_t rows = n * h * w;
  auto opts = y.options().dtype(torch::kFloat64);
  auto sum = torch::zeros({c}, opts), sq = torch::zeros({c}, opts);
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "stats", [&] {
    const scalar_t* p = y.data_ptr<scalar_t>();
    double* s = sum.data_ptr<double>();
    double* q = sq.data_ptr<double>();
    std::vector<double> shift(c);
    for (int64_t k = 0; k < c; ++k) shift[k] = p[k];
    for (int64_t r = 0; r < rows; ++r) {
      const scalar_t* row = p + r * c;
      for (int64_t k = 0; k < c; ++k) {
        double v = (double)row[k] - shift[k];
        s[k] += v; q[k] += v * v;
      }
    }
    for (int64_t k = 0; k < c; ++k) {
      double m = s[k] / rows;
      q[k] = std::max(q[k] / rows - m * m, 0.0);
      s[k] = m + shift[k];
    }
  });
  return {sum, sq};
}

// Forward: out (n, h2, w2, c) = relu((sel - mean) * scale + beta), sel = sign * max(sign * window).
// Returns out and sel.
std::vector<torch::Tensor> norm_pool_relu_forward(torch::Tensor y, torch::Tensor mean, torch::Tensor scale, torch::Tensor beta, torch::Tensor sign) {
  check(y, y, "y"); check(mean, y, "mean"); check(scale, y, "scale"); check(beta, y, "beta"); check(sign, y, "sign");
  auto n = y.size(0), h = y.size(1), w = y.size(2), c = y.size(3);
  auto h2 = h / 2, w2 = w / 2;
  auto out = torch::empty({n, h2, w2, c}, y.options());
  auto sel = torch::empty({n, h2, w2, c}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "npr_forward", [&] {
    const scalar_t* Y = y.data_ptr<scalar_t>();
    const scalar_t* M = mean.data_ptr<scalar_t>();
    const scalar_t* S = scale.data_ptr<scalar_t>();
    const scalar_t* B = beta.data_ptr<scalar_t>();
    const scalar_t* G = sign.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    scalar_t* L = sel.data_ptr<scalar_t>();
    at::parallel_for(0, n * h2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t io = begin; io < end; ++io) {
        int64_t i = io / h2, oh = io % h2;
        for (int64_t ow = 0; ow < w2; ++ow) {
          const scalar_t* __restrict__ p00 = Y + ((i * h + 2 * oh) * w + 2 * ow) * c;
          const scalar_t* __restrict__ p01 = p00 + c;
          const scalar_t* __restrict__ p10 = p00 + w * c;
          const scalar_t* __restrict__ p11 = p10 + c;
          int64_t q = ((i * h2 + oh) * w2 + ow) * c;
          scalar_t* __restrict__ o = O + q;
          scalar_t* __restrict__ l = L + q;
          _Pragma("omp simd")
          for (int64_t k = 0; k < c; ++k) {
            scalar_t g = G[k];
            scalar_t a = std::max(p00[k] * g, p01[k] * g);
            scalar_t b = std::max(p10[k] * g, p11[k] * g);
            scalar_t v = std::max(a, b) * g;
            l[k] = v;
            scalar_t z = (v - M[k]) * S[k] + B[k];
            o[k] = z > 0 ? z : scalar_t(0);
          }
        }
      }
    });
  });
  return {out, sel};
}

// Backward (first order). grad, out, sel: (n, h2, w2, c). Returns grad_y (n, h, w, c), grad_gamma, grad_beta.
std::vector<torch::Tensor> norm_pool_relu_backward(torch::Tensor grad, torch::Tensor y, torch::Tensor out, torch::Tensor sel,
                                    torch::Tensor mean, torch::Tensor invstd, torch::Tensor gamma, torch::Tensor sign, bool batch_stats) {
  check(grad, y, "grad"); check(y, y, "y"); check(out, y, "out"); check(sel, y, "sel");
  check(mean, y, "mean"); check(invstd, y, "invstd"); check(gamma, y, "gamma"); check(sign, y, "sign");
  auto n = y.size(0), h = y.size(1), w = y.size(2), c = y.size(3);
  auto h2 = h / 2, w2 = w / 2;
  auto gy = torch::empty_like(y);
  auto gz_t = torch::empty_like(grad);
  auto ggamma = torch::empty({c}, y.options()), gbeta = torch::empty({c}, y.options());
  AT_DISPATCH_FLOATING_TYPES(y.scalar_type(), "npr_backward", [&] {
    const scalar_t* Gr = grad.data_ptr<scalar_t>();
    const scalar_t* Y = y.data_ptr<scalar_t>();
    const scalar_t* O = out.data_ptr<scalar_t>();
    const scalar_t* L = sel.data_ptr<scalar_t>();
    const scalar_t* M = mean.data_ptr<scalar_t>();
    const scalar_t* I = invstd.data_ptr<scalar_t>();
    const scalar_t* Ga = gamma.data_ptr<scalar_t>();
    const scalar_t* Sg = sign.data_ptr<scalar_t>();
    scalar_t* GZ = gz_t.data_ptr<scalar_t>();
    int64_t pooled = n * h2 * w2;
    std::vector<double> sb(c, 0.0), sgm(c, 0.0);
    // pass 1 (pooled size): the ReLU's gradient and the sums for beta and gamma
    for (int64_t p = 0; p < pooled; ++p) {
      const scalar_t* __restrict__ g = Gr + p * c;
      const scalar_t* __restrict__ o = O + p * c;
      const scalar_t* __restrict__ l = L + p * c;
      scalar_t* __restrict__ gz = GZ + p * c;
      double* __restrict__ b_ = sb.data();
      double* __restrict__ g_ = sgm.data();
          _Pragma("omp simd")
      for (int64_t k = 0; k < c; ++k) {
        scalar_t z = o[k] > 0 ? g[k] : scalar_t(0);
        gz[k] = z;
        b_[k] += z;
        g_[k] += (double)z * ((double)l[k] - (double)M[k]);
      }
    }
    std::vector<scalar_t> A(c), Bc(c), Sc(c);
    int64_t count = n * h * w;
    for (int64_t k = 0; k < c; ++k) {
      double inv = I[k];
      double gg = sgm[k] * inv;
      ggamma.data_ptr<scalar_t>()[k] = (scalar_t)gg;
      gbeta.data_ptr<scalar_t>()[k] = (scalar_t)sb[k];
      double scale = (double)Ga[k] * inv;
      Sc[k] = (scalar_t)scale;
      if (batch_stats) {
        double b = -scale * inv * gg / count;
        Bc[k] = (scalar_t)b;
        A[k] = (scalar_t)(-scale * sb[k] / count - b * (double)M[k]);
      } else { Bc[k] = 0; A[k] = 0; }
    }
    scalar_t* GY = gy.data_ptr<scalar_t>();
    const scalar_t* __restrict__ Ap = A.data();
    const scalar_t* __restrict__ Bp = Bc.data();
    const scalar_t* __restrict__ Sp = Sc.data();
    // pass 2: a + b*y everywhere, plus scale*gz at each window's first max (of sign*y)
    at::parallel_for(0, n * h2, 1, [&](int64_t begin, int64_t end) {
      for (int64_t io = begin; io < end; ++io) {
        int64_t i = io / h2, oh = io % h2;
        for (int64_t ow = 0; ow < w2; ++ow) {
          int64_t o00 = ((i * h + 2 * oh) * w + 2 * ow) * c, o10 = o00 + w * c;
          const scalar_t* __restrict__ y00 = Y + o00; const scalar_t* __restrict__ y01 = y00 + c;
          const scalar_t* __restrict__ y10 = Y + o10; const scalar_t* __restrict__ y11 = y10 + c;
          scalar_t* __restrict__ g00 = GY + o00; scalar_t* __restrict__ g01 = g00 + c;
          scalar_t* __restrict__ g10 = GY + o10; scalar_t* __restrict__ g11 = g10 + c;
          const scalar_t* __restrict__ gz = GZ + ((i * h2 + oh) * w2 + ow) * c;
          _Pragma("omp simd")
          for (int64_t k = 0; k < c; ++k) {
            scalar_t s = Sg[k];
            scalar_t v0 = y00[k] * s, v1 = y01[k] * s, v2 = y10[k] * s, v3 = y11[k] * s;
            scalar_t best = std::max(std::max(v0, v1), std::max(v2, v3));
            scalar_t add = Sp[k] * gz[k];
            // the first of the window's maxima takes the gradient (as max-pooling's backward does)
            scalar_t left = add;
            scalar_t a0 = v0 == best ? left : scalar_t(0); left -= a0;
            scalar_t a1 = v1 == best ? left : scalar_t(0); left -= a1;
            scalar_t a2 = v2 == best ? left : scalar_t(0); left -= a2;
            g00[k] = Ap[k] + Bp[k] * y00[k] + a0;
            g01[k] = Ap[k] + Bp[k] * y01[k] + a1;
            g10[k] = Ap[k] + Bp[k] * y10[k] + a2;
            g11[k] = Ap[k] + Bp[k] * y11[k] + left;
          }
        }
        // the rows and columns the floor-pooling leaves out (odd sizes): dense part only
        for (int64_t r = 2 * oh; r < 2 * oh + 2; ++r) {
          for (int64_t col = 2 * w2; col < w; ++col) {
            int64_t o = ((i * h + r) * w + col) * c;
            for (int64_t k = 0; k < c; ++k) GY[o + k] = Ap[k] + Bp[k] * Y[o + k];
          }
        }
      }
      // the last row when h is odd: done by the work item of the last pooled row of each image
      for (int64_t io = begin; io < end; ++io) {
        int64_t i = io / h2, oh = io % h2;
        if (oh != h2 - 1 || h % 2 == 0) continue;
        for (int64_t col = 0; col < w; ++col) {
          int64_t o = ((i * h + (h - 1)) * w + col) * c;
          for (int64_t k = 0; k < c; ++k) GY[o + k] = Ap[k] + Bp[k] * Y[o + k];
        }
      }
    });
  });
  return {gy, ggamma, gbeta};
}

// ---------------------------------------------------------------------------------------------
// Conv-4's first block on one-channel images: 3x3 convolution (padding 1) of the centred image
// columns, 2x2 max-pool, then the norm's affine map and ReLU (see _single_channel_block).
// ---------------------------------------------------------------------------------------------

// The nine centred taps of the 4 positions of pooling window (oh, ow) of image x (h, w), zero padding 1.
template <typename T>
static inline void window_taps(const T* x, int64_t h, int64_t w, int64_t oh, int64_t ow, const T* mu, T taps[4][9]) {
  for (int a = 0; a < 4; ++a) {
    int64_t r = 2 * oh + (a >> 1), s = 2 * ow + (a & 1);
    for (int dy = 0; dy < 3; ++dy) {
      int64_t rr = r - 1 + dy;
      for (int dx = 0; dx < 3; ++dx) {
        int64_t ss = s - 1 + dx;
        T v = (rr >= 0 && rr < h && ss >= 0 && ss < w) ? x[rr * w + ss] : T(0);
        taps[a][dy * 3 + dx] = v - mu[dy * 3 + dx];
      }
    }
  }
}

// Sums (9) and Gram matrix (9, 9) of the nine zero-padded 3x3 shifts of images x (n, h, w) over
// all n*h*w positions, in double: the first block's batch statistics (the image columns' mean and
// covariance) without forming the columns.
std::vector<torch::Tensor> first_block_stats(torch::Tensor x) {
  check(x, x, "x");
  auto n = x.size(0), h = x.size(1), w = x.size(2);
  auto opts64 = x.options().dtype(torch::kFloat64);
  auto sums = torch::zeros({9}, opts64), gram = torch::zeros({9, 9}, opts64);
  std::mutex lock;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "first_block_stats", [&] {
    const scalar_t* X = x.data_ptr<scalar_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      int64_t pw = w + 2;
      std::vector<double> pad((h + 2) * pw, 0.0), acc(45 * w, 0.0), sacc(9 * w, 0.0);
      for (int64_t i = begin; i < end; ++i) {
        for (int64_t r = 0; r < h; ++r)
          for (int64_t col = 0; col < w; ++col) pad[(r + 1) * pw + col + 1] = (double)X[(i * h + r) * w + col];
        for (int64_t r = 0; r < h; ++r) {
          int pair = 0;
          for (int j = 0; j < 9; ++j) {
            const double* __restrict__ a = pad.data() + (r + j / 3) * pw + j % 3;
            double* __restrict__ sa = sacc.data() + j * w;
            _Pragma("omp simd")
            for (int64_t col = 0; col < w; ++col) sa[col] += a[col];
            for (int l = j; l < 9; ++l, ++pair) {
              const double* __restrict__ b = pad.data() + (r + l / 3) * pw + l % 3;
              double* __restrict__ out = acc.data() + pair * w;
              _Pragma("omp simd")
              for (int64_t col = 0; col < w; ++col) out[col] += a[col] * b[col];
            }
          }
        }
      }
      std::lock_guard<std::mutex> guard(lock);
      double* S = sums.data_ptr<double>();
      double* G = gram.data_ptr<double>();
      int pair = 0;
      for (int j = 0; j < 9; ++j) {
        for (int64_t col = 0; col < w; ++col) S[j] += sacc[j * w + col];
        for (int l = j; l < 9; ++l, ++pair) {
          double total = 0;
          for (int64_t col = 0; col < w; ++col) total += acc[pair * w + col];
          G[j * 9 + l] += total;
          if (l != j) G[l * 9 + j] += total;
        }
      }
    });
  });
  return {sums, gram};
}

// x: (n, h, w); weight_t: (9, c); returns out (n, h2, w2, c) = relu(max4 * scale + shift), pooled (max4)
// and which (uint8: the window position of the first maximum).
std::vector<torch::Tensor> first_block_forward(torch::Tensor x, torch::Tensor weight_t, torch::Tensor mu, torch::Tensor scale, torch::Tensor shift) {
  check(x, x, "x"); check(weight_t, x, "weight_t"); check(mu, x, "mu"); check(scale, x, "scale"); check(shift, x, "shift");
  auto n = x.size(0), h = x.size(1), w = x.size(2), c = weight_t.size(1);
  auto h2 = h / 2, w2 = w / 2;
  auto out = torch::empty({n, h2, w2, c}, x.options());
  auto pooled = torch::empty({n, h2, w2, c}, x.options());
  auto which = torch::empty({n, h2, w2, c}, x.options().dtype(torch::kUInt8));
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "first_block_forward", [&] {
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* W = weight_t.data_ptr<scalar_t>();
    const scalar_t* MU = mu.data_ptr<scalar_t>();
    const scalar_t* SC = scale.data_ptr<scalar_t>();
    const scalar_t* SH = shift.data_ptr<scalar_t>();
    scalar_t* O = out.data_ptr<scalar_t>();
    scalar_t* P = pooled.data_ptr<scalar_t>();
    uint8_t* WH = which.data_ptr<uint8_t>();
    at::parallel_for(0, n * h2, 1, [&](int64_t begin, int64_t end) {
      scalar_t taps[4][9];
      for (int64_t io = begin; io < end; ++io) {
        int64_t i = io / h2, oh = io % h2;
        const scalar_t* xi = X + i * h * w;
        for (int64_t ow = 0; ow < w2; ++ow) {
          window_taps(xi, h, w, oh, ow, MU, taps);
          int64_t q = ((i * h2 + oh) * w2 + ow) * c;
          scalar_t* __restrict__ o = O + q;
          scalar_t* __restrict__ p = P + q;
          uint8_t* __restrict__ wh = WH + q;
          _Pragma("omp simd")
          for (int64_t k = 0; k < c; ++k) {
            scalar_t v[4];
            for (int a = 0; a < 4; ++a) {
              scalar_t acc = 0;
              for (int j = 0; j < 9; ++j) acc += taps[a][j] * W[j * c + k];
              v[a] = acc;
            }
            scalar_t best = std::max(std::max(v[0], v[1]), std::max(v[2], v[3]));
            scalar_t at = v[2] == best ? scalar_t(2) : scalar_t(3);  // the first maximum, as max-pooling picks
            at = v[1] == best ? scalar_t(1) : at;
            at = v[0] == best ? scalar_t(0) : at;
            wh[k] = (uint8_t)at;
            p[k] = best;
            scalar_t z = best * SC[k] + SH[k];
            o[k] = z > 0 ? z : scalar_t(0);
          }
        }
      }
    });
  });
  return {out, pooled, which};
}

// grad: (n, h2, w2, c). Returns grad_weight_t (9, c), grad_scale (c), grad_shift (c).
std::vector<torch::Tensor> first_block_backward(torch::Tensor grad, torch::Tensor x, torch::Tensor weight_t, torch::Tensor mu,
                                                torch::Tensor scale, torch::Tensor out, torch::Tensor pooled, torch::Tensor which) {
  check(grad, x, "grad"); check(x, x, "x"); check(weight_t, x, "weight_t"); check(mu, x, "mu");
  check(scale, x, "scale"); check(out, x, "out"); check(pooled, x, "pooled");
  TORCH_CHECK(which.is_contiguous(), "metalab Conv-4 kernel: which must be contiguous");
  auto n = x.size(0), h = x.size(1), w = x.size(2), c = weight_t.size(1);
  auto h2 = h / 2, w2 = w / 2;
  auto opts64 = x.options().dtype(torch::kFloat64);
  auto gw64 = torch::zeros({9, c}, opts64), gs64 = torch::zeros({c}, opts64), gb64 = torch::zeros({c}, opts64);
  std::mutex lock;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "first_block_backward", [&] {
    const scalar_t* G = grad.data_ptr<scalar_t>();
    const scalar_t* X = x.data_ptr<scalar_t>();
    const scalar_t* W = weight_t.data_ptr<scalar_t>();
    const scalar_t* MU = mu.data_ptr<scalar_t>();
    const scalar_t* SC = scale.data_ptr<scalar_t>();
    const scalar_t* O = out.data_ptr<scalar_t>();
    const scalar_t* P = pooled.data_ptr<scalar_t>();
    const uint8_t* WH = which.data_ptr<uint8_t>();
    at::parallel_for(0, n, 1, [&](int64_t begin, int64_t end) {
      std::vector<double> gw(9 * c, 0.0), gs(c, 0.0), gb(c, 0.0);
      std::vector<scalar_t> lw(9 * c), ls(c), lb(c);
      scalar_t taps[4][9];
      for (int64_t i = begin; i < end; ++i) {  // per image: float sums, then into double
        std::fill(lw.begin(), lw.end(), scalar_t(0));
        std::fill(ls.begin(), ls.end(), scalar_t(0));
        std::fill(lb.begin(), lb.end(), scalar_t(0));
        scalar_t* __restrict__ LW = lw.data();
        scalar_t* __restrict__ LS = ls.data();
        scalar_t* __restrict__ LB = lb.data();
        const scalar_t* xi = X + i * h * w;
        for (int64_t oh = 0; oh < h2; ++oh) {
          for (int64_t ow = 0; ow < w2; ++ow) {
            window_taps(xi, h, w, oh, ow, MU, taps);
            int64_t q = ((i * h2 + oh) * w2 + ow) * c;
            const scalar_t* __restrict__ g = G + q;
            const scalar_t* __restrict__ o = O + q;
            const scalar_t* __restrict__ p = P + q;
            const uint8_t* __restrict__ wh = WH + q;
            _Pragma("omp simd")
            for (int64_t k = 0; k < c; ++k) {
              scalar_t gz = o[k] > 0 ? g[k] : scalar_t(0);
              LB[k] += gz;
              LS[k] += gz * p[k];
              scalar_t gp = gz * SC[k];
              scalar_t at = (scalar_t)wh[k];  // the window position the forward's pool took
              scalar_t m[4];
              m[0] = at == scalar_t(0) ? gp : scalar_t(0);
              m[1] = at == scalar_t(1) ? gp : scalar_t(0);
              m[2] = at == scalar_t(2) ? gp : scalar_t(0);
              m[3] = at == scalar_t(3) ? gp : scalar_t(0);
              for (int j = 0; j < 9; ++j)
                LW[j * c + k] += m[0] * taps[0][j] + m[1] * taps[1][j] + m[2] * taps[2][j] + m[3] * taps[3][j];
            }
          }
        }
        for (int64_t t = 0; t < 9 * c; ++t) gw[t] += LW[t];
        for (int64_t k = 0; k < c; ++k) { gs[k] += LS[k]; gb[k] += LB[k]; }
      }
      std::lock_guard<std::mutex> guard(lock);
      double* A = gw64.data_ptr<double>(); double* S = gs64.data_ptr<double>(); double* B = gb64.data_ptr<double>();
      for (int64_t t = 0; t < 9 * c; ++t) A[t] += gw[t];
      for (int64_t k = 0; k < c; ++k) { S[k] += gs[k]; B[k] += gb[k]; }
    });
  });
  return {gw64.to(x.scalar_type()), gs64.to(x.scalar_type()), gb64.to(x.scalar_type())};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("channel_stats", &channel_stats);
  m.def("norm_pool_relu_forward", &norm_pool_relu_forward);
  m.def("norm_pool_relu_backward", &norm_pool_relu_backward);
  m.def("first_block_stats", &first_block_stats);
  m.def("first_block_forward", &first_block_forward);
  m.def("first_block_backward", &first_block_backward);
}
