/* One pass over a layer's batch of activations: every per-unit statistic and the
 * layer histogram, reading each value once.
 *
 * Why C and not TensorFlow or XLA: on a CPU, XLA reduces `x * x` or `x > 0` over the
 * leading axes with a scalar, strided loop (11 ms for the sum of squares of 34 MB,
 * where a plain sum takes 2.5 ms), and TensorFlow writes each elementwise
 * intermediate to fresh memory. This loop keeps the units axis innermost, so the
 * compiler vectorises it, and reads the batch once: about 5x faster than the fused XLA
 * reduction it replaces (docs/capture.md, "Performance").
 *
 * Values are summed in float32 over blocks of at most BLOCK positions, then in
 * float64. A block whose float32 sums are not finite (it holds NaN or Inf, or its
 * squares overflow float32) is summed again, masked, in float64.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define HIST_BINS 2048
#define FINITE_MAGNITUDES 1020 /* float32 exponent 255 (inf, NaN) starts here */
#define BLOCK 128

/* Rows of the (11, units) output, in the order of reduce.STAT_NAMES. */
enum { N, S1, S2, LOW, HIGH, POS, SAMPLE_POS, NANS, INFS, LOWER, UPPER, ROWS };

typedef struct {
    Py_ssize_t samples, positions, units;
    const float *x;
    const float *shift;
    int bounded;
    float lower, upper;
    double *out;  /* ROWS * units */
    float *smax;  /* per unit: the current sample's maximum over non-NaN values */
    float *f;     /* 8 * units float32 block accumulators */
} Pass;

static inline const float *at(const Pass *p, Py_ssize_t s, Py_ssize_t pos) {
    return p->x + (s * p->positions + pos) * p->units;
}

/* One row of float32 values into the block sums; restrict lets the compiler vectorise. */
static inline __attribute__((always_inline)) void add_row(
    const float *restrict row, const float *restrict shift, Py_ssize_t units,
    float *restrict s1f, float *restrict s2f, float *restrict pos, float *restrict low,
    float *restrict high, float *restrict smax, float *restrict lower, float *restrict upper,
    float lb, float ub, const int bounded) {
    for (Py_ssize_t u = 0; u < units; u++) {
        const float v = row[u], d = v - shift[u];
        s1f[u] += d;
        s2f[u] += d * d;
        pos[u] += v > 0.0f ? 1.0f : 0.0f;
        low[u] = v < low[u] ? v : low[u];
        high[u] = v > high[u] ? v : high[u];
        smax[u] = v > smax[u] ? v : smax[u];
        if (bounded) {
            lower[u] += v <= lb ? 1.0f : 0.0f;
            upper[u] += v >= ub ? 1.0f : 0.0f;
        }
    }
}

/* float32 sums of a block (samples s0..s1, positions p0..p1); 0 if they are not finite. */
static inline __attribute__((always_inline)) int fast_block(
    Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1, const int bounded) {
    const Py_ssize_t units = p->units;
    float *s1f = p->f, *s2f = s1f + units, *pos = s2f + units, *low = pos + units,
          *high = low + units, *spos = high + units, *lower = spos + units,
          *upper = lower + units, *smax = p->smax;
    for (Py_ssize_t u = 0; u < units; u++) {
        s1f[u] = s2f[u] = pos[u] = spos[u] = lower[u] = upper[u] = 0.0f;
        low[u] = INFINITY;
        high[u] = -INFINITY;
    }
    for (Py_ssize_t s = s0; s < s1; s++) {
        if (p0 == 0)
            for (Py_ssize_t u = 0; u < units; u++) smax[u] = -INFINITY;
        for (Py_ssize_t q = p0; q < p1; q++)
            add_row(at(p, s, q), p->shift, units, s1f, s2f, pos, low, high, smax, lower, upper,
                    p->lower, p->upper, bounded);
        if (p1 == p->positions)
            for (Py_ssize_t u = 0; u < units; u++) spos[u] += smax[u] > 0.0f ? 1.0f : 0.0f;
    }
    int finite = 1;
    for (Py_ssize_t u = 0; u < units; u++) finite &= isfinite(s2f[u]) && isfinite(s1f[u]);
    if (!finite) return 0;
    double *out = p->out;
    const double n = (double)((s1 - s0) * (p1 - p0));
    for (Py_ssize_t u = 0; u < units; u++) {
        out[N * units + u] += n;
        out[S1 * units + u] += s1f[u];
        out[S2 * units + u] += s2f[u];
        out[POS * units + u] += pos[u];
        out[SAMPLE_POS * units + u] += spos[u];
        out[LOWER * units + u] += lower[u];
        out[UPPER * units + u] += upper[u];
        if (low[u] < out[LOW * units + u]) out[LOW * units + u] = low[u];
        if (high[u] > out[HIGH * units + u]) out[HIGH * units + u] = high[u];
    }
    return 1;
}

/* The same block in float64, counting NaN and Inf apart from the finite values. */
static void masked_block(Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1) {
    const Py_ssize_t units = p->units;
    double *out = p->out;
    for (Py_ssize_t s = s0; s < s1; s++) {
        if (p0 == 0)
            for (Py_ssize_t u = 0; u < units; u++) p->smax[u] = -INFINITY;
        for (Py_ssize_t q = p0; q < p1; q++) {
            const float *row = at(p, s, q);
            for (Py_ssize_t u = 0; u < units; u++) {
                const float v = row[u];
                if (isnan(v)) {
                    out[NANS * units + u] += 1;
                    continue;
                }
                if (v > p->smax[u]) p->smax[u] = v;
                out[POS * units + u] += v > 0.0f;
                if (p->bounded) {
                    out[LOWER * units + u] += v <= p->lower;
                    out[UPPER * units + u] += v >= p->upper;
                }
                if (isinf(v)) {
                    out[INFS * units + u] += 1;
                    continue;
                }
                const double d = (double)v - (double)p->shift[u];
                out[N * units + u] += 1;
                out[S1 * units + u] += d;
                out[S2 * units + u] += d * d;
                if (v < out[LOW * units + u]) out[LOW * units + u] = v;
                if (v > out[HIGH * units + u]) out[HIGH * units + u] = v;
            }
        }
        if (p1 == p->positions)
            for (Py_ssize_t u = 0; u < units; u++) out[SAMPLE_POS * units + u] += p->smax[u] > 0.0f;
    }
}

static void block(Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1) {
    /* Two copies of the fast loop, with and without the bound counts. */
    const int ok = p->bounded ? fast_block(p, s0, s1, p0, p1, 1) : fast_block(p, s0, s1, p0, p1, 0);
    if (!ok) masked_block(p, s0, s1, p0, p1);
}

/* Per unit, its first finite value in the batch (0 where it has none). */
static void first_finite(const float *x, Py_ssize_t rows, Py_ssize_t units, float *shift,
                         char *found) {
    Py_ssize_t missing = units;
    memset(found, 0, (size_t)units);
    for (Py_ssize_t u = 0; u < units; u++) shift[u] = 0.0f;
    for (Py_ssize_t r = 0; r < rows && missing > 0; r++)
        for (Py_ssize_t u = 0; u < units; u++)
            if (!found[u] && isfinite(x[r * units + u])) {
                shift[u] = x[r * units + u];
                found[u] = 1;
                missing--;
            }
}

static void histogram(const float *x, Py_ssize_t count, int64_t *bins) {
    memset(bins, 0, HIST_BINS * sizeof(int64_t));
    for (Py_ssize_t i = 0; i < count; i++) {
        uint32_t bits;
        memcpy(&bits, x + i, sizeof bits);
        const uint32_t magnitude = (bits & 0x7FFFFFFFu) >> 21;
        if (magnitude >= FINITE_MAGNITUDES) continue; /* inf and NaN: counted elsewhere */
        bins[(bits >> 31) ? 1023 - magnitude : 1024 + magnitude]++;
    }
}

static int run(Pass *p, int find_shift, float *shift, Py_ssize_t hist_samples, int64_t *bins) {
    const Py_ssize_t units = p->units, samples = p->samples, positions = p->positions;
    p->smax = malloc((size_t)units * 9 * sizeof(float) + (size_t)units);
    if (p->smax == NULL) return -1;
    p->f = p->smax + units;
    if (find_shift) first_finite(p->x, samples * positions, units, shift, (char *)(p->f + 8 * units));
    p->shift = shift;
    for (Py_ssize_t r = 0; r < ROWS; r++)
        for (Py_ssize_t u = 0; u < units; u++)
            p->out[r * units + u] = r == LOW ? INFINITY : r == HIGH ? -INFINITY : 0.0;
    if (positions >= BLOCK) {
        for (Py_ssize_t s = 0; s < samples; s++)
            for (Py_ssize_t q = 0; q < positions; q += BLOCK)
                block(p, s, s + 1, q, q + BLOCK < positions ? q + BLOCK : positions);
    } else if (positions > 0) {
        const Py_ssize_t group = BLOCK / positions;
        for (Py_ssize_t s = 0; s < samples; s += group)
            block(p, s, s + group < samples ? s + group : samples, 0, positions);
    }
    histogram(p->x, (hist_samples < samples ? hist_samples : samples) * positions * units, bins);
    free(p->smax);
    return 0;
}

static int check_size(const Py_buffer *buffer, Py_ssize_t items, Py_ssize_t itemsize,
                      const char *name) {
    if (buffer->len != items * itemsize) {
        PyErr_Format(PyExc_ValueError, "%s holds %zd bytes, expected %zd", name, buffer->len,
                     items * itemsize);
        return 0;
    }
    return 1;
}

PyDoc_STRVAR(summarize_doc,
             "summarize(values, samples, positions, units, shift, find_shift, bounded, lower, "
             "upper, hist_samples, moments, hist)\n\n"
             "Statistics of a C-contiguous float32 (samples, positions, units) buffer into the\n"
             "float64 (11, units) `moments` and int64 (2048,) `hist` buffers, around the float32\n"
             "`shift` (filled with each unit's first finite value when `find_shift`).");

static PyObject *summarize(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer values, shift, moments, hist;
    Pass p;
    int find_shift, bounded;
    Py_ssize_t hist_samples;
    if (!PyArg_ParseTuple(args, "y*nnnw*ppffnw*w*", &values, &p.samples, &p.positions,
                          &p.units, &shift, &find_shift, &bounded, &p.lower, &p.upper,
                          &hist_samples, &moments, &hist))
        return NULL;
    PyObject *result = NULL;
    int status = 0;
    if (p.samples < 0 || p.positions < 0 || p.units < 1) {
        PyErr_SetString(PyExc_ValueError, "samples and positions must be >= 0, units >= 1");
        goto done;
    }
    if (!check_size(&values, p.samples * p.positions * p.units, 4, "values") ||
        !check_size(&shift, p.units, 4, "shift") ||
        !check_size(&moments, ROWS * p.units, 8, "moments") ||
        !check_size(&hist, HIST_BINS, 8, "hist"))
        goto done;
    p.x = values.buf;
    p.bounded = bounded;
    p.out = moments.buf;
    Py_BEGIN_ALLOW_THREADS
    status = run(&p, find_shift, shift.buf, hist_samples, hist.buf);
    Py_END_ALLOW_THREADS
    if (status != 0) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&values);
    PyBuffer_Release(&shift);
    PyBuffer_Release(&moments);
    PyBuffer_Release(&hist);
    return result;
}

static PyMethodDef methods[] = {
    {"summarize", summarize, METH_VARARGS, summarize_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_kernel",
    .m_doc = "keraslens' one-pass activation statistics.", .m_size = -1, .m_methods = methods,
};

PyMODINIT_FUNC PyInit__kernel(void) { return PyModule_Create(&module); }
