/* One pass over a layer's batch of activations: every per-unit statistic and the
 * layer histogram, reading each value once.
 *
 * Why C and not TensorFlow or XLA: on a CPU, XLA reduces `x * x` or `x > 0` over the
 * leading axes with a scalar, strided loop (11 ms for the sum of squares of 34 MB,
 * where a plain sum takes 2.5 ms), and TensorFlow writes each elementwise
 * intermediate to fresh memory. Here a block of rows is reduced 16 units at a time,
 * their accumulators held in vector registers, so each value is loaded once and costs
 * a few vector instructions; the pass runs at the speed of memory (docs/capture.md,
 * "Performance").
 *
 * Values are summed in float32 over blocks of at most BLOCK positions, then in
 * float64. A chunk of a block whose float32 sums are not finite (it holds NaN or Inf,
 * or its squares overflow float32) is summed again, masked, in float64.
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
/* Bytes ahead of the current row to ask the memory for: a layer's output has left the
 * caches by the time it is reduced. Inside a capture of the reference CNN, 8 KiB ahead
 * took 17% less CPU than 1 KiB (4-16 KiB all did about as well, docs/capture.md). */
#define PREFETCH 8192

/* One copy of the reduction loop per x86-64 vector width (SSE2, AVX2, AVX-512), the
 * widest the CPU has picked when the module loads: a wheel built on one machine stays
 * correct on another, and a new one still gets its wide vectors. */
#if defined(__GNUC__) && defined(__x86_64__) && defined(__linux__)
#define MULTIVERSION __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define MULTIVERSION
#endif

/* Rows of the (ROWS, units) output: the enum used here and the names the module exports
 * as `ROWS`, which keraslens/capture/stats.py's STATISTICS declares in the same order (a
 * test checks that they agree). A new statistic is a line here and one there. */
#define STAT_ROWS(X)                                                                        \
    X(N, "n") X(S1, "s1") X(S2, "s2") X(LOW, "min") X(HIGH, "max") X(POS, "pos")            \
    X(SAMPLE_POS, "sample_pos") X(NANS, "nan") X(INFS, "inf") X(LOWER, "lower")             \
    X(UPPER, "upper")
#define STAT_ENUM(id, name) id,
#define STAT_NAME(id, name) name,
enum { STAT_ROWS(STAT_ENUM) ROWS };
static const char *const row_names[] = {STAT_ROWS(STAT_NAME)};

typedef struct {
    Py_ssize_t samples, positions, units;
    const float *x;
    const float *shift;
    int bounded;
    float lower, upper;
    double *out;  /* ROWS * units */
    float *smax;  /* per unit: the current sample's maximum over non-NaN values */
    Py_ssize_t hist_limit;         /* the histogram counts samples 0..hist_limit */
    uint32_t (*keys)[HIST_BINS];  /* four arrays of counts per key (see histogram_add) */
    Py_ssize_t keyed;              /* values counted in `keys` since they were last added */
    int64_t *bins;
} Pass;

static inline const float *at(const Pass *p, Py_ssize_t s, Py_ssize_t pos) {
    return p->x + (s * p->positions + pos) * p->units;
}

/* Units are reduced CHUNK at a time, each chunk's accumulators held in registers over
 * every row of a block: the block's values are read once and no accumulator goes back
 * to memory until the block ends. */
#define CHUNK 16

/* float32 sums of units u0..u0+w (w <= CHUNK) over a block (samples s0..s1, positions
 * p0..p1), added to the float64 output; 0, with nothing added, if they are not finite. */
static inline __attribute__((always_inline)) int fast_chunk(
    Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1, Py_ssize_t u0,
    const Py_ssize_t w, const int bounded, const int single) {
    float s1f[CHUNK], s2f[CHUNK], pos[CHUNK], low[CHUNK], high[CHUNK], smax[CHUNK],
        spos[CHUNK], lower[CHUNK], upper[CHUNK], shift[CHUNK];
    const float lb = p->lower, ub = p->upper;
    const Py_ssize_t units = p->units;
    double *out = p->out + u0;
    /* The block's values are summed around the mean so far, or, in a unit's first block,
     * around the block's own float32 mean (one more read, from the cache): so a first
     * value far from the rest does not bring back the cancellation the shift avoids. */
    int first = 0;
    for (Py_ssize_t k = 0; k < w; k++) first |= out[N * units + k] == 0;
    if (first) {
        for (Py_ssize_t k = 0; k < w; k++) shift[k] = 0.0f;
        for (Py_ssize_t s = s0; s < s1; s++)
            for (Py_ssize_t q = p0; q < p1; q++) {
                const float *row = at(p, s, q) + u0;
                for (Py_ssize_t k = 0; k < w; k++) shift[k] += row[k];
            }
    }
    const float rows = (float)((s1 - s0) * (p1 - p0));
    for (Py_ssize_t k = 0; k < w; k++) {
        s1f[k] = s2f[k] = pos[k] = spos[k] = lower[k] = upper[k] = 0.0f;
        low[k] = INFINITY;
        high[k] = -INFINITY;
        const double n = out[N * units + k];
        const float mean = n > 0 ? (float)(p->shift[u0 + k] + out[S1 * units + k] / n)
                                 : shift[k] / rows;
        shift[k] = isfinite(mean) ? mean : p->shift[u0 + k];
    }
    for (Py_ssize_t s = s0; s < s1; s++) {
        if (!single)
            for (Py_ssize_t k = 0; k < w; k++) smax[k] = p0 == 0 ? -INFINITY : p->smax[u0 + k];
        for (Py_ssize_t q = p0; q < p1; q++) {
            const float *row = at(p, s, q) + u0;
            __builtin_prefetch((const char *)row + PREFETCH);
            for (Py_ssize_t k = 0; k < w; k++) {
                const float v = row[k], d = v - shift[k];
                s1f[k] += d;
                s2f[k] += d * d;
                pos[k] += v > 0.0f ? 1.0f : 0.0f;
                low[k] = v < low[k] ? v : low[k];
                high[k] = v > high[k] ? v : high[k];
                if (!single) smax[k] = v > smax[k] ? v : smax[k];
                if (bounded) {
                    lower[k] += v <= lb ? 1.0f : 0.0f;
                    upper[k] += v >= ub ? 1.0f : 0.0f;
                }
            }
        }
        /* A failed block leaves smax updated with its own values: the masked pass takes
         * the maximum of the same values again, which changes nothing. */
        if (single)
            continue;
        if (p1 == p->positions)
            for (Py_ssize_t k = 0; k < w; k++) spos[k] += smax[k] > 0.0f ? 1.0f : 0.0f;
        else
            for (Py_ssize_t k = 0; k < w; k++) p->smax[u0 + k] = smax[k];
    }
    if (single) /* one position: a sample fires where its only output does */
        for (Py_ssize_t k = 0; k < w; k++) spos[k] = pos[k];
    int finite = 1;
    for (Py_ssize_t k = 0; k < w; k++) finite &= isfinite(s2f[k]) && isfinite(s1f[k]);
    if (!finite) return 0;
    const double n = (double)((s1 - s0) * (p1 - p0));
    for (Py_ssize_t k = 0; k < w; k++) {
        /* The block's sums, taken around shift[k], moved to the batch's shift in float64. */
        const double moved = (double)shift[k] - (double)p->shift[u0 + k];
        out[N * units + k] += n;
        out[S1 * units + k] += s1f[k] + n * moved;
        out[S2 * units + k] += s2f[k] + 2.0 * moved * s1f[k] + n * moved * moved;
        out[POS * units + k] += pos[k];
        out[SAMPLE_POS * units + k] += spos[k];
        out[LOWER * units + k] += lower[k];
        out[UPPER * units + k] += upper[k];
        if (low[k] < out[LOW * units + k]) out[LOW * units + k] = low[k];
        if (high[k] > out[HIGH * units + k]) out[HIGH * units + k] = high[k];
    }
    return 1;
}

/* The same block in float64 for units u0..u1, counting NaN and Inf apart from the finite
 * values. */
static void masked_chunk(Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1,
                         Py_ssize_t u0, Py_ssize_t u1) {
    const Py_ssize_t units = p->units;
    double *out = p->out;
    for (Py_ssize_t s = s0; s < s1; s++) {
        if (p0 == 0)
            for (Py_ssize_t u = u0; u < u1; u++) p->smax[u] = -INFINITY;
        for (Py_ssize_t q = p0; q < p1; q++) {
            const float *row = at(p, s, q);
            for (Py_ssize_t u = u0; u < u1; u++) {
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
            for (Py_ssize_t u = u0; u < u1; u++) out[SAMPLE_POS * units + u] += p->smax[u] > 0.0f;
    }
}

/* The counts per key, as buckets, into `bins` (NaN and Inf drop out: counted elsewhere). */
static void histogram_flush(Pass *p) {
    for (uint32_t key = 0; key < HIST_BINS; key++) {
        const uint32_t magnitude = key & 1023;
        if (magnitude < FINITE_MAGNITUDES)
            p->bins[(key >> 10) ? 1023 - magnitude : 1024 + magnitude] +=
                (int64_t)p->keys[0][key] + p->keys[1][key] + p->keys[2][key] + p->keys[3][key];
    }
    memset(p->keys, 0, 4 * sizeof p->keys[0]);
    p->keyed = 0;
}

/* Counts the values x[0..count) per float32 "key", their top 11 bits (sign and magnitude
 * bucket), which index the counters with no arithmetic. Four counter arrays in turn: a
 * run of values in one bucket (a ReLU's zeros) would otherwise wait on each increment of
 * one counter. */
static inline void histogram_add(Pass *p, const float *x, Py_ssize_t count) {
    const uint32_t *bits = (const uint32_t *)x;
    const Py_ssize_t part = (Py_ssize_t)1 << 30; /* the uint32 counters cannot overflow */
    for (Py_ssize_t start = 0; start < count; start += part) {
        const Py_ssize_t end = count - start > part ? start + part : count;
        if (p->keyed + (end - start) > part) histogram_flush(p);
        Py_ssize_t i = start;
        for (; i + 4 <= end; i += 4) {
            p->keys[0][bits[i] >> 21]++;
            p->keys[1][bits[i + 1] >> 21]++;
            p->keys[2][bits[i + 2] >> 21]++;
            p->keys[3][bits[i + 3] >> 21]++;
        }
        for (; i < end; i++) p->keys[0][bits[i] >> 21]++;
        p->keyed += end - start;
    }
}

/* One block, chunk by chunk. The full chunks get a compile-time width, so the compiler
 * unrolls and vectorises them. */
static inline __attribute__((always_inline)) void chunks(
    Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1, const int bounded,
    const int single) {
    const Py_ssize_t units = p->units, full = units - units % CHUNK;
    for (Py_ssize_t u0 = 0; u0 < full; u0 += CHUNK)
        if (!fast_chunk(p, s0, s1, p0, p1, u0, CHUNK, bounded, single))
            masked_chunk(p, s0, s1, p0, p1, u0, u0 + CHUNK);
    if (full < units && !fast_chunk(p, s0, s1, p0, p1, full, units - full, bounded, single))
        masked_chunk(p, s0, s1, p0, p1, full, units);
}

/* One copy of the loop per combination of the flags it tests for every value. */
static inline __attribute__((always_inline)) void block(
    Pass *p, Py_ssize_t s0, Py_ssize_t s1, Py_ssize_t p0, Py_ssize_t p1) {
    const int single = p->positions == 1;
    if (p->bounded)
        single ? chunks(p, s0, s1, p0, p1, 1, 1) : chunks(p, s0, s1, p0, p1, 1, 0);
    else
        single ? chunks(p, s0, s1, p0, p1, 0, 1) : chunks(p, s0, s1, p0, p1, 0, 0);
    /* The block's histogram while its values are still in the cache. Its values lie
     * together in memory: part of one sample, or whole samples. */
    const Py_ssize_t last = s1 < p->hist_limit ? s1 : p->hist_limit;
    if (s0 < last) {
        const float *end = last == s1 ? at(p, s1 - 1, p1) : at(p, last, 0);
        histogram_add(p, at(p, s0, p0), end - at(p, s0, p0));
    }
}

MULTIVERSION static void blocks(Pass *p) {
    const Py_ssize_t samples = p->samples, positions = p->positions;
    if (positions >= BLOCK) {
        for (Py_ssize_t s = 0; s < samples; s++)
            for (Py_ssize_t q = 0; q < positions; q += BLOCK)
                block(p, s, s + 1, q, q + BLOCK < positions ? q + BLOCK : positions);
    } else if (positions > 0) {
        const Py_ssize_t group = BLOCK / positions;
        for (Py_ssize_t s = 0; s < samples; s += group)
            block(p, s, s + group < samples ? s + group : samples, 0, positions);
    }
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

/* One part of the batch (whole samples) into its own p->out and p->bins. */
static int run_part(Pass *p) {
    const Py_ssize_t units = p->units;
    p->smax = malloc((size_t)units * sizeof(float));
    p->keys = calloc(4, sizeof p->keys[0]);
    if (p->smax == NULL || p->keys == NULL) {
        free(p->smax);
        free(p->keys);
        return -1;
    }
    for (Py_ssize_t r = 0; r < ROWS; r++)
        for (Py_ssize_t u = 0; u < units; u++)
            p->out[r * units + u] = r == LOW ? INFINITY : r == HIGH ? -INFINITY : 0.0;
    memset(p->bins, 0, HIST_BINS * sizeof(int64_t));
    p->keyed = 0;
    blocks(p);
    histogram_flush(p);
    free(p->smax);
    free(p->keys);
    return 0;
}

#define MAX_PARTS 64
/* Values a part gets at least: a smaller one is not worth a thread of its own. */
#define PART_VALUES (1 << 18)

typedef struct {
    Pass pass;
    int status;
} Part;

_Static_assert(sizeof(double) == sizeof(int64_t), "a part's bins share its moments' buffer");

#if defined(__unix__) || defined(__APPLE__)
#include <pthread.h>
#define THREADS 1
static void *run_thread(void *arg) {
    Part *part = arg;
    part->status = run_part(&part->pass);
    return NULL;
}
#else
#define THREADS 0 /* no POSIX threads: one part */
#endif

/* The batch split by samples into at most `threads` parts reduced side by side (a
 * layer's output is too large for one core's share of the memory bandwidth), merged
 * in a fixed order: the result depends on `threads`, never on timing. */
static int run(Pass *p, int find_shift, float *shift, int threads) {
    const Py_ssize_t units = p->units, samples = p->samples;
    if (find_shift) {
        char *found = malloc((size_t)units);
        if (found == NULL) return -1;
        first_finite(p->x, samples * p->positions, units, shift, found);
        free(found);
    }
    p->shift = shift;
    Py_ssize_t parts = (samples * p->positions * units) / PART_VALUES;
    if (parts > threads) parts = threads;
    if (parts > samples) parts = samples;
    if (parts > MAX_PARTS) parts = MAX_PARTS;
    if (!THREADS || parts < 2) return run_part(p);
    Part part[MAX_PARTS];
    /* Parts 1.. get their own moments and bins, one after the other in one buffer. */
    const Py_ssize_t stride = ROWS * units + HIST_BINS;
    double *buffers = malloc((size_t)((parts - 1) * stride) * sizeof(double));
    if (buffers == NULL) return run_part(p);
    int status = 0;
    for (Py_ssize_t i = 0; i < parts; i++) {
        const Py_ssize_t s0 = samples * i / parts, s1 = samples * (i + 1) / parts;
        Pass *q = &part[i].pass;
        *q = *p;
        q->x = at(p, s0, 0);
        q->samples = s1 - s0;
        const Py_ssize_t limit = p->hist_limit - s0; /* the part's share of the histogram */
        q->hist_limit = limit < 0 ? 0 : limit < q->samples ? limit : q->samples;
        if (i > 0) {
            q->out = buffers + (i - 1) * stride;
            q->bins = (int64_t *)(q->out + ROWS * units);
        }
        part[i].status = 0;
    }
#if THREADS
    /* Part 0 in this thread, the others in threads of their own (in this thread too if
     * one cannot be started). */
    pthread_t thread[MAX_PARTS];
    int started[MAX_PARTS] = {0};
    for (Py_ssize_t i = 1; i < parts; i++)
        started[i] = pthread_create(&thread[i], NULL, run_thread, &part[i]) == 0;
    run_thread(&part[0]);
    for (Py_ssize_t i = 1; i < parts; i++)
        if (started[i])
            pthread_join(thread[i], NULL);
        else
            run_thread(&part[i]);
#endif
    for (Py_ssize_t i = 0; i < parts; i++) status |= part[i].status;
    for (Py_ssize_t i = 1; i < parts && status == 0; i++) {
        const double *out = part[i].pass.out;
        for (Py_ssize_t r = 0; r < ROWS; r++)
            for (Py_ssize_t u = 0; u < units; u++) {
                double *to = &p->out[r * units + u];
                const double v = out[r * units + u];
                *to = r == LOW ? (v < *to ? v : *to) : r == HIGH ? (v > *to ? v : *to) : *to + v;
            }
        for (Py_ssize_t b = 0; b < HIST_BINS; b++) p->bins[b] += part[i].pass.bins[b];
    }
    free(buffers);
    return status;
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
             "upper, hist_samples, moments, hist, threads=1)\n\n"
             "Statistics of a C-contiguous float32 (samples, positions, units) buffer into the\n"
             "float64 (len(ROWS), units) `moments` and int64 (2048,) `hist` buffers, around the float32\n"
             "`shift` (filled with each unit's first finite value when `find_shift`), split by\n"
             "samples over at most `threads` threads.");

static PyObject *summarize(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer values, shift, moments, hist;
    Pass p;
    int find_shift, bounded;
    Py_ssize_t hist_samples;
    int threads = 1;
    if (!PyArg_ParseTuple(args, "y*nnnw*ppffnw*w*|i", &values, &p.samples, &p.positions,
                          &p.units, &shift, &find_shift, &bounded, &p.lower, &p.upper,
                          &hist_samples, &moments, &hist, &threads))
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
    p.bins = hist.buf;
    p.hist_limit = hist_samples < p.samples ? hist_samples : p.samples;
    Py_BEGIN_ALLOW_THREADS
    status = run(&p, find_shift, shift.buf, threads);
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

PyMODINIT_FUNC PyInit__kernel(void) {
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    PyObject *names = PyTuple_New(ROWS);
    if (names == NULL) goto fail;
    for (Py_ssize_t r = 0; r < ROWS; r++) {
        PyObject *name = PyUnicode_FromString(row_names[r]);
        if (name == NULL) {
            Py_DECREF(names);
            goto fail;
        }
        PyTuple_SET_ITEM(names, r, name);
    }
    if (PyModule_AddObject(m, "ROWS", names) == 0) return m;
    Py_DECREF(names);
fail:
    Py_DECREF(m);
    return NULL;
}
