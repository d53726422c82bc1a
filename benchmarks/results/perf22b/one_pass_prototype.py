"""What a one-pass graft would cost (issue 22, option (b): the graft ratio of the previous step, 7 words per
element): a prototype C loop that updates m and v, steps θ by a given ratio and sums the next step's norms in the
same pass (adam-grafted, p = ¼, float32, no masks or redo), timed against torch.optim.Adam(fused=True) on the
same 8 M parameters, interleaved, median of 21. Not the library's code: a measurement for the decision.

    python benchmarks/results/perf22b/one_pass_prototype.py THREADS
"""
import ctypes, os, statistics, subprocess, sys, tempfile, time  # noqa: E401

import torch

SOURCE = r"""
#include <math.h>
#include <stdint.h>
void step(float* th, const float* g, float* m, float* v, int64_t n, float alpha, double* sums, int threads) {
    double dd = 0, rr = 0;
    #pragma omp parallel for reduction(+:dd, rr) schedule(static) num_threads(threads)
    for (int64_t b = 0; b < n; b += 4096) {
        int64_t e = n < b + 4096 ? n : b + 4096;
        float sd = 0, sr = 0;
        #pragma omp simd reduction(+:sd, sr)
        for (int64_t i = b; i < e; ++i) {
            float mi = m[i] + 0.1f * (g[i] - m[i]), vi = v[i] * 0.999f + (0.001f * g[i]) * g[i];
            float s = sqrtf(vi), d = mi / (sqrtf(s) + 1e-8f), r = mi / (s + 1e-8f);
            m[i] = mi; v[i] = vi; th[i] += alpha * d;
            sd += d * d; sr += r * r;
        }
        dd += sd; rr += sr;
    }
    sums[0] = dd; sums[1] = rr;
}
"""


def main(threads: int) -> None:
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        src, lib = os.path.join(tmp, "p.c"), os.path.join(tmp, "p.so")
        open(src, "w").write(SOURCE)
        subprocess.run(["cc", "-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-fopenmp",
                        "-shared", "-fPIC", src, "-o", lib, "-lm"], check=True)
        proto = ctypes.CDLL(lib).step
    proto.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    n = 8_000_000
    g = torch.randn(n) * 1e-2
    th, m, v, sums = torch.zeros(n), torch.zeros(n), torch.zeros(n), torch.zeros(2, dtype=torch.float64)
    w = torch.nn.Parameter(torch.zeros(n))
    w.grad = g.clone()
    adam = torch.optim.Adam([w], fused=True)
    adam.step()
    times = {"one pass": [], "Adam fused": []}
    for _ in range(21):
        t0 = time.perf_counter()
        proto(th.data_ptr(), g.data_ptr(), m.data_ptr(), v.data_ptr(), n, -1e-3, sums.data_ptr(), threads)
        t1 = time.perf_counter()
        adam.step()
        t2 = time.perf_counter()
        times["one pass"].append(t1 - t0)
        times["Adam fused"].append(t2 - t1)
    adam_ms = statistics.median(times["Adam fused"]) * 1e3
    ratio = statistics.median(times["one pass"]) * 1e3 / adam_ms
    print(f"{threads} thread(s): Adam fused {adam_ms:.2f} ms; one-pass graft prototype {ratio:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
