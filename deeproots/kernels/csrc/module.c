/* The Python extension deeproots.kernels._cpu: thin entry points over the kernels, threading and scratch.
 *
 * Calls go through METH_FASTCALL, so a call costs well under a microsecond before the kernel runs. Arrays come as
 * objects exporting the buffer protocol (numpy arrays), never as addresses, and every argument is checked against
 * the sizes given before a kernel runs (the trust boundary below). Threads come from pool.c; the GIL is released
 * while the kernels run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "attention.h"
#include "elementwise.h"
#include "int8probe.h"
#include "memread.h"
#include "pool.h"
#include "qgemm.h"
#include "scratch.h"

#define FLOAT_ROWS 4 /* fgemm's row tile: threads split rows in multiples of it */
#define MIN_BLOCKS_PER_THREAD 64 /* below this much work (16-row x 32-value blocks x tokens) a thread is not worth it */
#define PRIVATE_QUANT_BLOCKS 128 /* up to this many activation blocks every thread quantizes x itself: no barrier */
#define AMX_MIN_TOKENS 16 /* products of at least this many tokens use AMX where usable (docs/benchmarks.md) */

static int n_threads = 1;

/* The calling thread's scratch for quantized activations, and for an expert's rows gathered from them. */
static _Thread_local scratch_t scratch, gather_scratch;

static void *scratch_get(size_t size) { return scratch_grow(&scratch, size); }

static int is_float_type(int type) { return type == T_F32 || type == T_F16 || type == T_BF16; }

static int threads_for(int64_t units, int64_t max_parts)
{
    int64_t n = units / MIN_BLOCKS_PER_THREAD;
    n = n < max_parts ? n : max_parts;
    return n < 1 ? 1 : n < n_threads ? (int)n : n_threads;
}

typedef struct {
    int type;
    const uint8_t *w;
    int64_t N, K, T;
    const float *x;
    float *out;
    act_t act; /* shared quantized activations (unused when every thread quantizes its own) */
    _Atomic int failed;
} job_t;

static void float_part(void *ctx, int i, int n)
{
    const job_t *job = ctx;
    const int64_t tiles = (job->N + FLOAT_ROWS - 1) / FLOAT_ROWS;
    const int64_t n0 = tiles * i / n * FLOAT_ROWS, n1 = tiles * (i + 1) / n * FLOAT_ROWS;
    if (n0 < n1)
        fgemm_rows(job->type, job->w, n0, n1 < job->N ? n1 : job->N, job->N, job->K, job->x, job->T, job->out);
}

/* Bytes of T x K quantized activations laid out as act_at does it (a multiple of 64). */
static size_t act_bytes(int64_t T, int64_t K)
{
    const size_t q_bytes = ((size_t)(T * K) + 63) & ~(size_t)63;
    return (q_bytes + (size_t)(T * (K / QBLOCK)) * (2 * sizeof(float) + 2 * sizeof(int32_t)) + 63) & ~(size_t)63;
}

/* T x K activations in the act_bytes(T, K) bytes at buf (64-byte aligned). */
static act_t act_at(uint8_t *buf, int64_t T, int64_t K)
{
    const int64_t nb = K / QBLOCK;
    float *d = (float *)(buf + (((size_t)(T * K) + 63) & ~(size_t)63));
    return (act_t){(int8_t *)buf, d, d + T * nb, (int32_t *)(d + 2 * T * nb), T, K, nb};
}

/* Scratch of this thread laid out for T x K activations, or 0 when memory ran out. */
static int act_alloc(act_t *a, int64_t T, int64_t K)
{
    uint8_t *buf = scratch_get(act_bytes(T, K));
    if (!buf)
        return 0;
    *a = act_at(buf, T, K);
    return 1;
}

static void quantize_into(const act_t *a, const float *x, int64_t t0, int64_t t1)
{
    quantize_activations(x, t0, t1, a->K, (int8_t *)a->q, (float *)a->d, (float *)a->s, (int32_t *)a->sq);
}

static void groups_part(const job_t *job, const act_t *a, int i, int n)
{
    const int64_t groups = (job->N + ROWS - 1) / ROWS;
    qgemm_run(job->type, job->w, groups * i / n, groups * (i + 1) / n, job->N, a, job->out);
}

/* Small T: quantize all of x into this thread's own scratch, then multiply this thread's groups. */
static void private_quant_part(void *ctx, int i, int n)
{
    job_t *job = ctx;
    act_t a;
    if (!act_alloc(&a, job->T, job->K)) {
        atomic_store(&job->failed, 1);
        return;
    }
    quantize_into(&a, job->x, 0, job->T);
    groups_part(job, &a, i, n);
}

static void shared_quant_part(void *ctx, int i, int n)
{
    const job_t *job = ctx;
    quantize_into(&job->act, job->x, job->T * i / n, job->T * (i + 1) / n);
}

static void shared_groups_part(void *ctx, int i, int n)
{
    const job_t *job = ctx;
    groups_part(job, &job->act, i, n);
}

/* Returns 0, or -1 when scratch memory could not be allocated. */
static int run_linear(job_t *job)
{
    if (is_float_type(job->type)) {
        const int64_t tiles = (job->N + FLOAT_ROWS - 1) / FLOAT_ROWS;
        pool_run(float_part, job, threads_for(tiles * FLOAT_ROWS / ROWS * (job->K / QBLOCK + 1) * job->T, tiles));
        return 0;
    }
    const int64_t nb = job->K / QBLOCK, groups = (job->N + ROWS - 1) / ROWS;
    const int parts = threads_for(groups * nb * job->T, groups);
    if (job->T * nb <= PRIVATE_QUANT_BLOCKS) {
        pool_run(private_quant_part, job, parts);
    } else {
        if (!act_alloc(&job->act, job->T, job->K))
            return -1;
        pool_run(shared_quant_part, job, threads_for(job->T * nb, job->T));
        pool_run(shared_groups_part, job, parts);
    }
    return atomic_load(&job->failed) ? -1 : 0;
}

/* ---- Expert-grouped products: one threaded call for the rows of several experts ----
 * Expert j multiplies rows [starts[j], starts[j+1]) of x by its own weight w[j] (all of one type and shape) into the
 * same rows of out. Parts split the units (16-row groups, or float row tiles) of all experts at once, each unit
 * weighted by its expert's row count + 1 (the rows' arithmetic and the weight's bytes), so a decode step's 8 experts
 * take one dispatch instead of 8, and prefill's uneven experts are shared out by work. A row's result is the one
 * linear gives it alone (the same kernels over the same quantized row).
 * With `rows`, product row i reads x's row rows[i] (a mixture's token of each (token, slot) pair): x's T rows are
 * quantized once, and each part gathers its experts' quantized rows, so a token routed to k experts is neither
 * copied k times as floats nor quantized k times. */
typedef struct {
    int type;
    int64_t N, K, E, M, units, cost; /* units per expert; cost: sum over experts of units * (rows + 1) */
    const uint8_t **w;               /* (E,) packed weights */
    const int64_t *starts;           /* (E + 1,) row offsets into out (and x, without rows) */
    const int64_t *rows;             /* (M,) x's row of each product row, or NULL: row i of x */
    int64_t T;                       /* rows of x: M without rows */
    int64_t widest;                  /* with rows: the most rows one expert has (the gathered rows' scratch) */
    const float *x;
    float *out;
    act_t act; /* all T rows of x quantized, when shared */
    int shared;
    _Atomic int failed;
} experts_job_t;

static int64_t ceil_div(int64_t a, int64_t b) { return a <= 0 ? 0 : (a + b - 1) / b; }

/* Quantized rows rows[0..n) of a, in that order, into dst (laid out for at least n rows). */
static void gather_act(const act_t *a, const int64_t *rows, int64_t n, const act_t *dst)
{
    const int64_t K = a->K, nb = a->nb;
    for (int64_t i = 0; i < n; i++) {
        const int64_t r = rows[i];
        memcpy((int8_t *)dst->q + i * K, a->q + r * K, (size_t)K);
        memcpy((float *)dst->d + i * nb, a->d + r * nb, (size_t)nb * sizeof(float));
        memcpy((float *)dst->s + i * nb, a->s + r * nb, (size_t)nb * sizeof(float));
        memcpy((int32_t *)dst->sq + 2 * i * nb, a->sq + 2 * r * nb, (size_t)(2 * nb) * sizeof(int32_t));
    }
}

/* Units [u0, u1) of expert j over its rows; `gathered`: scratch for them when they are not consecutive rows of a. */
static void expert_units(const experts_job_t *job, const act_t *a, const act_t *gathered, int64_t j, int64_t u0,
                         int64_t u1)
{
    const int64_t s = job->starts[j], rows = job->starts[j + 1] - s, N = job->N, K = job->K;
    if (is_float_type(job->type)) {
        const int64_t n1 = u1 * FLOAT_ROWS < N ? u1 * FLOAT_ROWS : N;
        fgemm_rows(job->type, job->w[j], u0 * FLOAT_ROWS, n1, N, K, job->x + s * K, rows, job->out + s * N);
        return;
    }
    int64_t first = s; /* the expert's first row in a, when its rows lie there one after another */
    if (job->rows) {
        first = job->rows[s];
        for (int64_t i = 1; i < rows && first >= 0; i++)
            first = job->rows[s + i] == first + i ? first : -1;
        if (first < 0) {
            gather_act(a, job->rows + s, rows, gathered);
            a = gathered, first = 0;
        }
    }
    const act_t sub = {a->q + first * K, a->d + first * a->nb, a->s + first * a->nb, a->sq + 2 * first * a->nb, rows,
                       K, a->nb};
    qgemm_run(job->type, job->w[j], u0, u1, N, &sub, job->out + s * N);
}

static void experts_part(void *ctx, int i, int n)
{
    experts_job_t *job = ctx;
    act_t own, gathered = {0};
    const act_t *a = &job->act;
    if (!is_float_type(job->type) && !job->shared) {
        if (!act_alloc(&own, job->T, job->K)) {
            atomic_store(&job->failed, 1);
            return;
        }
        quantize_into(&own, job->x, 0, job->T);
        a = &own;
    }
    if (!is_float_type(job->type) && job->rows) { /* its own scratch: the calling thread's holds the shared rows */
        uint8_t *buf = scratch_grow(&gather_scratch, act_bytes(job->widest, job->K));
        if (!buf) {
            atomic_store(&job->failed, 1);
            return;
        }
        gathered = act_at(buf, job->widest, job->K);
    }
    /* this part owns the units whose cost position (before it) lies in [lo, hi) */
    const int64_t lo = job->cost * i / n, hi = job->cost * (i + 1) / n;
    int64_t position = 0;
    for (int64_t j = 0; j < job->E && position < hi; j++) {
        const int64_t weight = job->starts[j + 1] - job->starts[j] + 1;
        if (weight > 1) {
            const int64_t u0 = ceil_div(lo - position, weight), u1 = ceil_div(hi - position, weight);
            if (u0 < job->units && u0 < u1)
                expert_units(job, a, &gathered, j, u0, u1 < job->units ? u1 : job->units);
            position += job->units * weight;
        }
    }
}

static void experts_quant_part(void *ctx, int i, int n)
{
    const experts_job_t *job = ctx;
    quantize_into(&job->act, job->x, job->T * i / n, job->T * (i + 1) / n);
}

/* Returns 0, or -1 when scratch memory could not be allocated. */
static int run_experts(experts_job_t *job)
{
    const int floats = is_float_type(job->type);
    const int64_t nb = job->K / QBLOCK;
    job->units = floats ? (job->N + FLOAT_ROWS - 1) / FLOAT_ROWS : (job->N + ROWS - 1) / ROWS;
    job->cost = job->widest = 0;
    for (int64_t j = 0; j < job->E; j++) {
        const int64_t rows = job->starts[j + 1] - job->starts[j];
        if (rows > 0)
            job->cost += job->units * (rows + 1);
        job->widest = rows > job->widest ? rows : job->widest;
    }
    /* work in 16-row x 32-value blocks x rows (saturating: only a thread count comes of it) */
    int64_t work;
    if (__builtin_mul_overflow(job->units * (floats ? FLOAT_ROWS : ROWS) / ROWS * (nb + 1), job->M, &work))
        work = INT64_MAX;
    const int parts = threads_for(work, job->cost);
    job->shared = !floats && job->T * nb > PRIVATE_QUANT_BLOCKS;
    if (job->shared) {
        if (!act_alloc(&job->act, job->T, job->K))
            return -1;
        pool_run(experts_quant_part, job, threads_for(job->T * nb, job->T));
    }
    pool_run(experts_part, job, parts);
    return atomic_load(&job->failed) ? -1 : 0;
}

/* ---- The trust boundary: every argument is checked here, in C, before a kernel sees it. ----
 * A wrong call raises deeproots.errors.InternalError naming the entry point, the argument, what was expected and what
 * came (the callers in the deeproots.kernels modules validate user input first, with RequestError). Arrays come
 * through the buffer protocol with their element format; a contiguous array must hold exactly the bytes its shape
 * needs, a strided one must have exactly the shape told, and the kernel then steps with the view's own strides.
 * Every view taken is released on every path (views start zeroed: PyBuffer_Release skips those never taken). */

static PyObject *internal_error; /* deeproots.errors.InternalError, imported at module init */

#define DIM_MAX ((int64_t)1 << 40) /* bound of every size argument: sums of two never overflow */
#define MAX_THREADS 512           /* bound of set_num_threads (the pool runs at most 64 threads at once) */

/* Raises InternalError "fn: <message>" and returns -1. */
static int fail(const char *fn, const char *format, ...)
{
    va_list va;
    va_start(va, format);
    PyObject *message = PyUnicode_FromFormatV(format, va);
    va_end(va);
    if (message) {
        PyErr_Format(internal_error, "%s: %U", fn, message);
        Py_DECREF(message);
    }
    return -1;
}

/* Replaces the pending TypeError / ValueError / OverflowError / BufferError raised while reading argument `name` with
 * an InternalError naming it (the original as its __cause__); any other error (MemoryError) stays. Returns -1. */
static int fail_reading(const char *fn, const char *name)
{
    if (!PyErr_ExceptionMatches(PyExc_TypeError) && !PyErr_ExceptionMatches(PyExc_ValueError) &&
        !PyErr_ExceptionMatches(PyExc_OverflowError) && !PyErr_ExceptionMatches(PyExc_BufferError))
        return -1;
    PyObject *type, *cause, *tb;
    PyErr_Fetch(&type, &cause, &tb);
    PyErr_NormalizeException(&type, &cause, &tb);
    PyErr_Format(internal_error, "%s: argument %s: %S", fn, name, cause);
    PyObject *type2, *error, *tb2;
    PyErr_Fetch(&type2, &error, &tb2);
    PyErr_NormalizeException(&type2, &error, &tb2);
    if (tb)
        PyException_SetTraceback(cause, tb);
    PyException_SetCause(error, cause); /* steals cause */
    PyErr_Restore(type2, error, tb2);
    Py_XDECREF(type);
    Py_XDECREF(tb);
    return -1;
}

static int arg_count(const char *fn, Py_ssize_t nargs, Py_ssize_t wanted, const char *usage)
{
    return nargs == wanted ? 0 : fail(fn, "takes %zd arguments (%s), got %zd", wanted, usage, nargs);
}

/* *v = o, a Python int (bool included) in [lo, hi]. */
static int int_arg(const char *fn, const char *name, PyObject *o, int64_t lo, int64_t hi, int64_t *v)
{
    if (!PyLong_Check(o))
        return fail(fn, "%s must be an int, got %s", name, Py_TYPE(o)->tp_name);
    const long long x = PyLong_AsLongLong(o);
    if (x == -1 && PyErr_Occurred())
        return fail_reading(fn, name);
    if (x < lo || x > hi)
        return fail(fn, "%s must be in [%lld, %lld], got %lld", name, (long long)lo, (long long)hi, x);
    *v = x;
    return 0;
}

static int size_arg(const char *fn, const char *name, PyObject *o, int64_t lo, int64_t *v)
{
    return int_arg(fn, name, o, lo, DIM_MAX, v);
}

static int float_arg(const char *fn, const char *name, PyObject *o, double *v)
{
    if (!PyFloat_Check(o) && !PyLong_Check(o))
        return fail(fn, "%s must be a float, got %s", name, Py_TYPE(o)->tp_name);
    *v = PyFloat_AsDouble(o);
    return *v == -1.0 && PyErr_Occurred() ? fail_reading(fn, name) : 0;
}

/* a * b for sizes a, b >= 0, saturating at INT64_MAX (a length no buffer has). */
static int64_t mul(int64_t a, int64_t b)
{
    int64_t r;
    return __builtin_mul_overflow(a, b, &r) ? INT64_MAX : r;
}

/* Element formats, as the buffer protocol (struct module) names them. */
enum { F32 = 'f', F16 = 'e', U8 = 'B', I64 = 'q' };

static const char *format_name(char format)
{
    return format == F32 ? "float32" : format == F16 ? "float16" : format == U8 ? "uint8" : "int64";
}

static Py_ssize_t format_size(char format) { return format == F32 ? 4 : format == F16 ? 2 : format == U8 ? 1 : 8; }

/* The buffer format of a kv type's cache rows: f32, f16, or q8_0 blocks as bytes. */
static char kv_format(int type) { return type == T_F32 ? F32 : type == T_F16 ? F16 : U8; }

/* Whether a view's elements are native `format` values ("f", "@f", "=f" or "<f" for float32 on this little-endian
 * host; numpy's int64 says "l"). */
static int has_format(const Py_buffer *v, char format)
{
    const char *f = v->format ? v->format : "B";
    if (*f == '@' || *f == '=' || (*f == '<' && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__))
        f++;
    const int same = f[0] == format || (format == I64 && (f[0] == 'l' || f[0] == 'q'));
    return same && f[1] == '\0' && v->itemsize == format_size(format);
}

/* view = o's buffer of `format` elements, taken with `flags` (+ PyBUF_FORMAT, + PyBUF_WRITABLE when `written`). */
static int get_view(const char *fn, const char *name, PyObject *o, char format, int written, int flags,
                    Py_buffer *view)
{
    if (PyObject_GetBuffer(o, view, flags | PyBUF_FORMAT | (written ? PyBUF_WRITABLE : 0))) {
        view->obj = NULL;
        return fail_reading(fn, name);
    }
    if (!has_format(view, format))
        return fail(fn, "%s must hold %s values, got buffer format '%s' of %zd-byte items", name,
                    format_name(format), view->format ? view->format : "B", view->itemsize);
    return 0;
}

/* view = o's buffer: C-contiguous `format` elements, exactly `bytes` long, writable when `written`. */
static int get_contiguous(const char *fn, const char *name, PyObject *o, char format, int written, int64_t bytes,
                          Py_buffer *view)
{
    if (get_view(fn, name, o, format, written, PyBUF_C_CONTIGUOUS, view))
        return -1;
    if (view->len != bytes)
        return fail(fn, "%s holds %zd bytes, the sizes given need %lld (%s)", name, view->len, (long long)bytes,
                    format_name(format));
    return 0;
}

/* Whether distinct indices of a (ndim <= 4)-d array with these extents and strides (in elements) reach distinct
 * elements: taken by increasing |stride|, each dimension steps over all that the smaller ones span. */
static int one_to_one(int ndim, const int64_t *shape, const int64_t *strides)
{
    int64_t step[4], extent[4];
    int n = 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] <= 1)
            continue;
        int j = n++;
        const int64_t s = strides[i] < 0 ? -strides[i] : strides[i];
        for (; j > 0 && step[j - 1] > s; j--) /* insertion by |stride| */
            step[j] = step[j - 1], extent[j] = extent[j - 1];
        step[j] = s, extent[j] = shape[i];
    }
    int64_t span = 1; /* elements spanned by the dimensions taken so far */
    for (int j = 0; j < n; j++) {
        if (step[j] < span)
            return 0;
        span = mul(step[j], extent[j] - 1) + span;
    }
    return 1;
}

/* Checks that view is `ndim`-d (at most 4) with exactly `shape` and a contiguous last dimension, and sets strides[]
 * to its strides in elements (0 along a dimension of extent 1, never stepped along). A written view must not reach
 * one element by two indices (one_to_one). */
static int check_strides(const char *fn, const char *name, const Py_buffer *view, int ndim, const int64_t *shape,
                         int written, int64_t *strides)
{
    if (view->ndim != ndim)
        return fail(fn, "%s must be %d-d, got %d-d", name, ndim, view->ndim);
    int64_t n = 1;
    for (int i = 0; i < ndim; i++) {
        if (view->shape[i] != shape[i])
            return fail(fn, "%s has extent %zd along dimension %d, the sizes given need %lld", name, view->shape[i], i,
                        (long long)shape[i]);
        n = mul(n, shape[i]);
        strides[i] = 0;
    }
    if (n == 0) /* nothing is read or written */
        return 0;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] == 1)
            continue;
        if (view->strides[i] % view->itemsize)
            return fail(fn, "%s: stride %zd of dimension %d is not a whole number of %zd-byte elements", name,
                        view->strides[i], i, view->itemsize);
        strides[i] = view->strides[i] / view->itemsize;
    }
    if (shape[ndim - 1] > 1 && strides[ndim - 1] != 1)
        return fail(fn, "%s must have a contiguous last dimension, got a stride of %zd bytes", name,
                    view->strides[ndim - 1]);
    if (written && !one_to_one(ndim, shape, strides))
        return fail(fn, "%s is written, but its strides reach some element twice", name);
    return 0;
}

/* view = o's buffer: `format` elements with exactly `shape` (ndim dims) and a contiguous last dimension, any other
 * strides, set in strides[] in elements (see check_strides); writable when `written`. */
static int get_strided(const char *fn, const char *name, PyObject *o, char format, int written, int ndim,
                       const int64_t *shape, int64_t *strides, Py_buffer *view)
{
    if (get_view(fn, name, o, format, written, PyBUF_STRIDES, view))
        return -1;
    return check_strides(fn, name, view, ndim, shape, written, strides);
}

static void release(Py_buffer *views, Py_ssize_t n)
{
    for (Py_ssize_t i = 0; i < n; i++)
        PyBuffer_Release(&views[i]);
}

/* A GGML type id argument (validated further by each entry point). */
static int type_arg(const char *fn, PyObject *o, int *type)
{
    int64_t v = 0;
    if (int_arg(fn, "type", o, 0, 255, &v))
        return -1;
    *type = (int)v;
    return 0;
}

/* Bytes of a packed weight of N rows of K values: row-major floats, or whole groups of ROWS rows; -1: no kernel. */
static int64_t packed_bytes(int type, int64_t N, int64_t K)
{
    if (is_float_type(type))
        return mul(mul(N, K), type == T_F32 ? 4 : 2);
    const int64_t group = qgemm_group_bytes(type, K);
    return group > 0 ? mul((N + ROWS - 1) / ROWS, group) : -1;
}

/* packed_bytes, or -1 with InternalError raised where the type has no kernel for rows of K values. */
static int64_t weight_bytes(const char *fn, int type, int64_t N, int64_t K)
{
    const int64_t bytes = packed_bytes(type, N, K);
    return bytes >= 0 ? bytes : fail(fn, "no kernel for type %d with rows of K = %lld values", type, (long long)K);
}

/* linear(type, w, N, K, x, T, out): out (T, N) = x (T, K) @ W.T for W (N rows of K) packed as described in qgemm.h:
 * w uint8, packed_bytes long; x float32 and out float32 (written), C-contiguous. */
static PyObject *py_linear(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "linear";
    int type = 0;
    int64_t N = 0, K = 0, T = 0;
    if (arg_count(fn, nargs, 7, "type, w, N, K, x, T, out") || type_arg(fn, args[0], &type) ||
        size_arg(fn, "N", args[2], 1, &N) || size_arg(fn, "K", args[3], 1, &K) || size_arg(fn, "T", args[5], 0, &T))
        return NULL;
    const int64_t w_bytes = weight_bytes(fn, type, N, K);
    if (w_bytes < 0)
        return NULL;
    Py_buffer b[3] = {{0}};
    if (get_contiguous(fn, "w", args[1], U8, 0, w_bytes, &b[0]) ||
        get_contiguous(fn, "x", args[4], F32, 0, mul(mul(T, K), 4), &b[1]) ||
        get_contiguous(fn, "out", args[6], F32, 1, mul(mul(T, N), 4), &b[2])) {
        release(b, 3);
        return NULL;
    }
    job_t job = {.type = type, .w = b[0].buf, .N = N, .K = K, .T = T, .x = b[1].buf, .out = b[2].buf};
    int rc = 0;
    if (T > 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = run_linear(&job);
        Py_END_ALLOW_THREADS
    }
    release(b, 3);
    if (rc)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* linear_experts(type, ws, N, K, x, starts, out, rows): for each j, out[starts[j]:starts[j+1]] = x[the same rows] @
 * W_j.T, W_j = ws[j] (a tuple of E packed weights of N rows of K, each uint8 and packed_bytes long); x (M, K) float32
 * and out (M, N) float32 (written), C-contiguous; starts (E + 1,) int64 from 0 to M, never decreasing. rows: None, or
 * (M,) int64 indices into x (T, K) for a block type: out row i takes x's row rows[i] in place of row i. */
static PyObject *py_linear_experts(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "linear_experts";
    int type = 0;
    int64_t N = 0, K = 0;
    if (arg_count(fn, nargs, 8, "type, ws, N, K, x, starts, out, rows") || type_arg(fn, args[0], &type) ||
        size_arg(fn, "N", args[2], 1, &N) || size_arg(fn, "K", args[3], 1, &K))
        return NULL;
    const int64_t w_bytes = weight_bytes(fn, type, N, K);
    if (w_bytes < 0)
        return NULL;
    if (!PyTuple_Check(args[1])) {
        fail(fn, "ws must be a tuple of one packed weight per expert, got %s", Py_TYPE(args[1])->tp_name);
        return NULL;
    }
    const int indexed = args[7] != Py_None;
    if (indexed && is_float_type(type)) {
        fail(fn, "rows needs a block type, got type %d", type);
        return NULL;
    }
    const Py_ssize_t E = PyTuple_GET_SIZE(args[1]);
    Py_buffer *b = calloc((size_t)(4 + E), sizeof *b); /* starts, x, out, rows, then the E weights */
    const uint8_t **w = malloc((size_t)(E > 0 ? E : 1) * sizeof *w);
    PyObject *result = NULL;
    if (!b || !w) {
        PyErr_NoMemory();
        goto done;
    }
    if (get_contiguous(fn, "starts", args[5], I64, 0, mul(E + 1, 8), &b[0]))
        goto done;
    const int64_t *starts = b[0].buf, M = starts[E];
    for (Py_ssize_t j = 0; j < E; j++)
        if (starts[j] > starts[j + 1]) {
            fail(fn, "starts must not decrease, got %lld then %lld", (long long)starts[j], (long long)starts[j + 1]);
            goto done;
        }
    if (starts[0] != 0 || M > DIM_MAX) {
        fail(fn, "starts must run from 0 to at most %lld rows, got %lld to %lld", (long long)DIM_MAX,
             (long long)starts[0], (long long)M);
        goto done;
    }
    int64_t T = M;
    if (indexed) {
        if (get_view(fn, "x", args[4], F32, 0, PyBUF_C_CONTIGUOUS, &b[1]))
            goto done;
        if (b[1].len % mul(K, 4)) {
            fail(fn, "x holds %zd bytes, not whole rows of K = %lld float32", b[1].len, (long long)K);
            goto done;
        }
        T = b[1].len / mul(K, 4);
        if (get_contiguous(fn, "rows", args[7], I64, 0, mul(M, 8), &b[3]))
            goto done;
        const int64_t *rows = b[3].buf;
        for (int64_t i = 0; i < M; i++)
            if (rows[i] < 0 || rows[i] >= T) {
                fail(fn, "rows[%lld] = %lld is not a row of x (%lld rows)", (long long)i, (long long)rows[i],
                     (long long)T);
                goto done;
            }
    } else if (get_contiguous(fn, "x", args[4], F32, 0, mul(mul(M, K), 4), &b[1])) {
        goto done;
    }
    if (get_contiguous(fn, "out", args[6], F32, 1, mul(mul(M, N), 4), &b[2]))
        goto done;
    for (Py_ssize_t j = 0; j < E; j++) {
        if (get_contiguous(fn, "ws[j]", PyTuple_GET_ITEM(args[1], j), U8, 0, w_bytes, &b[4 + j]))
            goto done;
        w[j] = b[4 + j].buf;
    }
    experts_job_t job = {.type = type, .N = N, .K = K, .E = E, .M = M, .w = w, .starts = starts,
                         .rows = indexed ? b[3].buf : NULL, .T = T, .x = b[1].buf, .out = b[2].buf};
    int rc = 0;
    if (M > 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = run_experts(&job);
        Py_END_ALLOW_THREADS
    }
    if (rc) {
        PyErr_NoMemory();
        goto done;
    }
    result = Py_None;
    Py_INCREF(result);
done:
    if (b)
        release(b, 4 + E);
    free(b);
    free(w);
    return result;
}

/* group_bytes(type, K) -> bytes of one packed 16-row group, or -1 where the type has no quantized kernel. */
static PyObject *py_group_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "group_bytes";
    int type = 0;
    int64_t K = 0;
    if (arg_count(fn, nargs, 2, "type, K") || type_arg(fn, args[0], &type) || size_arg(fn, "K", args[1], 0, &K))
        return NULL;
    return PyLong_FromLongLong(qgemm_group_bytes(type, K));
}

typedef struct {
    int type;
    const uint8_t *src;
    int64_t n, K;
    uint8_t *dst;
} pack_job_t;

static void pack_part(void *ctx, int i, int n)
{
    const pack_job_t *job = ctx;
    const int64_t groups = (job->n + ROWS - 1) / ROWS;
    pack_blocks(job->type, job->src, job->n, job->K, groups * i / n, groups * (i + 1) / n, job->dst);
}

/* pack_blocks(type, src, n, K, dst): repack a Q4_0 / Q4_1 / Q8_0 weight's file rows src (n rows of K / 32 blocks,
 * uint8, C-contiguous) into dst (exactly ceil(n / 16) groups of group_bytes(type, K), uint8, C-contiguous, written),
 * groups split over the threads. */
static PyObject *py_pack_blocks(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "pack_blocks";
    int type = 0;
    int64_t n = 0, K = 0;
    if (arg_count(fn, nargs, 5, "type, src, n, K, dst") || type_arg(fn, args[0], &type) ||
        size_arg(fn, "n", args[2], 1, &n) || size_arg(fn, "K", args[3], 1, &K))
        return NULL;
    const int64_t row_bytes = file_row_bytes(type, K), groups = (n + ROWS - 1) / ROWS;
    if (row_bytes < 0) {
        fail(fn, "the type must be Q4_0, Q4_1 or Q8_0 with K a multiple of %d, got type %d, K = %lld", QBLOCK, type,
             (long long)K);
        return NULL;
    }
    Py_buffer b[2] = {{0}};
    if (get_contiguous(fn, "src", args[1], U8, 0, mul(n, row_bytes), &b[0]) ||
        get_contiguous(fn, "dst", args[4], U8, 1, mul(groups, qgemm_group_bytes(type, K)), &b[1])) {
        release(b, 2);
        return NULL;
    }
    pack_job_t job = {type, b[0].buf, n, K, b[1].buf};
    Py_BEGIN_ALLOW_THREADS
    pool_run(pack_part, &job, threads_for(groups * (K / QBLOCK), groups));
    Py_END_ALLOW_THREADS
    release(b, 2);
    Py_RETURN_NONE;
}

/* The rotary tables cos and sin: the same number of rows (positions) of `half` float32 each, C-contiguous; b[0], b[1]
 * get their views and *positions their rows. */
static int get_tables(const char *fn, PyObject *cos, PyObject *sin, int64_t half, Py_buffer *b, int64_t *positions)
{
    if (get_view(fn, "cos", cos, F32, 0, PyBUF_C_CONTIGUOUS, &b[0]) ||
        get_contiguous(fn, "sin", sin, F32, 0, b[0].len, &b[1]))
        return -1;
    if (b[0].len % (half * 4))
        return fail(fn, "cos and sin hold %zd bytes, not whole rows of rope_dim / 2 = %lld floats", b[0].len,
                    (long long)half);
    *positions = b[0].len / (half * 4);
    return 0;
}

/* A kv type argument: f32, f16, or q8_0 (which needs D a multiple of 32); *row = elements of one key or value row
 * (bytes of D / 32 blocks for q8_0). */
static int kv_type_arg(const char *fn, PyObject *o, int64_t D, int *type, int64_t *row)
{
    int64_t v = 0;
    if (int_arg(fn, "kv_type", o, 0, 255, &v))
        return -1;
    *type = (int)v;
    if (v == T_F32 || v == T_F16) {
        *row = D;
        return 0;
    }
    if (v == T_Q8_0 && D % QBLOCK == 0) {
        *row = D / QBLOCK * Q8_0_BYTES;
        return 0;
    }
    return fail(fn, "kv_type must be F32 (0), F16 (1) or Q8_0 (8, with D a multiple of %d), got %lld with D = %lld",
                QBLOCK, (long long)v, (long long)D);
}

/* An optional sinks argument: None (*sinks = NULL), or (n_heads,) float32, C-contiguous, viewed in *view. */
static int get_sinks(const char *fn, PyObject *o, int64_t H, Py_buffer *view, const float **sinks)
{
    *sinks = NULL;
    if (o == Py_None)
        return 0;
    if (get_contiguous(fn, "sinks", o, F32, 0, mul(H, 4), view))
        return -1;
    *sinks = view->buf;
    return 0;
}

/* attention(q, k, v, kv_type, n_heads, n_kv_heads, T, L, D, scale, out, window, sinks): the fields of attn_t
 * (attention.h).
 * q (n_heads, T, D) float32 and k, v (n_kv_heads, L, row) of the kv type's format, each with a contiguous last
 * dimension and any other strides (the kernel steps with the views' own); out (T, n_heads * D) float32, C-contiguous,
 * written. */
static PyObject *py_attention(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "attention";
    int64_t H = 0, G = 0, T = 0, L = 0, D = 0, row = 0, window = 0;
    int type = 0;
    double scale = 0.0;
    if (arg_count(fn, nargs, 13, "q, k, v, kv_type, n_heads, n_kv_heads, T, L, D, scale, out, window, sinks") ||
        size_arg(fn, "n_heads", args[4], 1, &H) || size_arg(fn, "n_kv_heads", args[5], 1, &G) ||
        size_arg(fn, "T", args[6], 0, &T) || size_arg(fn, "L", args[7], 0, &L) || size_arg(fn, "D", args[8], 1, &D) ||
        kv_type_arg(fn, args[3], D, &type, &row) || float_arg(fn, "scale", args[9], &scale) ||
        int_arg(fn, "window", args[11], 0, INT64_MAX, &window))
        return NULL;
    if (H % G || T > L) {
        fail(fn, "n_heads (%lld) must be a multiple of n_kv_heads (%lld) and T (%lld) at most L (%lld)",
             (long long)H, (long long)G, (long long)T, (long long)L);
        return NULL;
    }
    const int64_t q_shape[3] = {H, T, D}, kv_shape[3] = {G, L, row};
    int64_t qs[3], ks[3], vs[3];
    Py_buffer b[5] = {{0}};
    const float *sinks = NULL;
    if (get_strided(fn, "q", args[0], F32, 0, 3, q_shape, qs, &b[0]) ||
        get_strided(fn, "k", args[1], kv_format(type), 0, 3, kv_shape, ks, &b[1]) ||
        get_strided(fn, "v", args[2], kv_format(type), 0, 3, kv_shape, vs, &b[2]) ||
        get_contiguous(fn, "out", args[10], F32, 1, mul(mul(T, H), mul(D, 4)), &b[3]) ||
        get_sinks(fn, args[12], H, &b[4], &sinks)) {
        release(b, 5);
        return NULL;
    }
    const attn_t a = {.q = b[0].buf, .q_head = qs[0], .q_row = qs[1], .k = b[1].buf, .k_head = ks[0], .k_row = ks[1],
                      .v = b[2].buf, .v_head = vs[0], .v_row = vs[1], .kv_type = type, .n_heads = H, .n_kv_heads = G,
                      .T = T, .L = L, .D = D, .scale = (float)scale, .out = b[3].buf, .window = window,
                      .sinks = sinks};
    if (T > 0) {
        Py_BEGIN_ALLOW_THREADS
        attention_run(&a, n_threads);
        Py_END_ALLOW_THREADS
    }
    release(b, 5);
    Py_RETURN_NONE;
}

/* One sequence of attention_batch: its rows [row0, row0 + T) of qkv, its cache's key and value views (4-d,
 * C-contiguous, written) and where its new rows go. */
typedef struct {
    int64_t row0, T, offset;
    Py_buffer *keys, *values;
} batch_seq_t;

/* The arguments of attention_batch after checking, with the views they hold. */
typedef struct {
    int64_t B, layer, H, G, D, row, window, rope_dim, interleaved, qkv_row, positions;
    int type;
    double scale;
    float *qkv, *out;
    const float *cos, *sin, *sinks;
    batch_seq_t *seqs;
} batch_args_t;

/* seq's cache views: keys[b] and values[b], (n_layers > layer, G, max_tokens >= offset + T, row) of the kv type's
 * format, C-contiguous, written. */
static int get_cache(const char *fn, PyObject *keys, PyObject *values, Py_ssize_t b, const batch_args_t *a,
                     batch_seq_t *seq)
{
    PyObject *pair[2] = {PyTuple_GET_ITEM(keys, b), PyTuple_GET_ITEM(values, b)};
    Py_buffer *views[2] = {seq->keys, seq->values};
    static const char *const names[2] = {"keys", "values"};
    for (int i = 0; i < 2; i++) {
        if (get_view(fn, names[i], pair[i], kv_format(a->type), 1, PyBUF_C_CONTIGUOUS, views[i]))
            return -1;
        const Py_ssize_t *s = views[i]->shape;
        if (views[i]->ndim != 4)
            return fail(fn, "%s of sequence %zd must be 4-d, got %d-d", names[i], b, views[i]->ndim);
        if (s[0] <= a->layer || s[1] != a->G || s[2] < seq->offset + seq->T || s[3] != a->row ||
            (i == 1 && s[2] != views[0]->shape[2]))
            return fail(fn, "%s of sequence %zd must be (n_layers > %lld, %lld, >= %lld, %lld) as its keys, got "
                        "(%zd, %zd, %zd, %zd)", names[i], b, (long long)a->layer, (long long)a->G,
                        (long long)(seq->offset + seq->T), (long long)a->row, s[0], s[1], s[2], s[3]);
    }
    return 0;
}

/* Reads desc (B x 2 int64: each sequence's row count T and cache offset) into a->seqs, whose rows follow one
 * another in qkv from row 0; *N = their total, *end = the furthest position a sequence reaches. */
static int get_desc(const char *fn, PyObject *desc, batch_args_t *a, Py_buffer *view, int64_t *N, int64_t *end)
{
    if (get_contiguous(fn, "desc", desc, I64, 0, mul(a->B, 2 * 8), view))
        return -1;
    const int64_t *d = view->buf;
    *N = *end = 0;
    for (int64_t b = 0; b < a->B; b++) {
        batch_seq_t *seq = &a->seqs[b];
        seq->row0 = *N, seq->T = d[2 * b], seq->offset = d[2 * b + 1];
        if (seq->T < 0 || seq->T > DIM_MAX || seq->offset < 0 || seq->offset > DIM_MAX)
            return fail(fn, "desc of sequence %lld: T = %lld and offset = %lld must be in [0, %lld]", (long long)b,
                        (long long)seq->T, (long long)seq->offset, (long long)DIM_MAX);
        *N += seq->T;
        *end = seq->offset + seq->T > *end ? seq->offset + seq->T : *end;
    }
    return 0;
}

static void batch_run(const batch_args_t *a, attn_t *attn)
{
    const int64_t es = a->type == T_F32 ? 4 : a->type == T_F16 ? 2 : 1, H = a->H, G = a->G, D = a->D;
    for (int64_t b = 0; b < a->B; b++) {
        const batch_seq_t *s = &a->seqs[b];
        /* C-contiguous (n_layers, G, max_tokens, row): strides in elements (bytes for q8_0) from the shape */
        const int64_t row = a->row, head = s->keys->shape[2] * row, layer = a->layer * G * head * es;
        float *x = a->qkv + s->row0 * a->qkv_row;
        uint8_t *k = (uint8_t *)s->keys->buf + layer, *v = (uint8_t *)s->values->buf + layer;
        if (s->T > 0) {
            rope_run(x, a->qkv_row, s->T, H + G, D, a->cos, a->sin, s->offset, a->rope_dim, (int)a->interleaved,
                     n_threads);
            kv_store(a->type, x + H * D, D, a->qkv_row, k + s->offset * row * es, head, row, G, s->T, D);
            kv_store(a->type, x + (H + G) * D, D, a->qkv_row, v + s->offset * row * es, head, row, G, s->T, D);
        }
        attn[b] = (attn_t){.q = x, .q_head = D, .q_row = a->qkv_row, .k = k, .k_head = head, .k_row = row, .v = v,
                           .v_head = head, .v_row = row, .kv_type = a->type, .n_heads = H, .n_kv_heads = G, .T = s->T,
                           .L = s->offset + s->T, .D = D, .scale = (float)a->scale, .out = a->out + s->row0 * H * D,
                           .window = a->window, .sinks = a->sinks};
    }
    attention_batch_run(attn, a->B, n_threads);
}

/* The scalar arguments of attention_batch (see below). */
static int batch_scalars(const char *fn, PyObject *const *args, batch_args_t *a)
{
    return int_arg(fn, "layer", args[3], 0, DIM_MAX, &a->layer) || size_arg(fn, "n_heads", args[5], 1, &a->H) ||
           size_arg(fn, "n_kv_heads", args[6], 1, &a->G) || size_arg(fn, "D", args[7], 1, &a->D) ||
           kv_type_arg(fn, args[8], a->D, &a->type, &a->row) || float_arg(fn, "scale", args[9], &a->scale) ||
           int_arg(fn, "window", args[10], 0, INT64_MAX, &a->window) ||
           size_arg(fn, "rope_dim", args[14], 2, &a->rope_dim) ||
           int_arg(fn, "interleaved", args[15], 0, 1, &a->interleaved) ||
           (a->H % a->G || a->rope_dim % 2 || a->rope_dim > a->D
                ? fail(fn, "n_heads (%lld) must be a multiple of n_kv_heads (%lld), rope_dim (%lld) even and at most "
                           "D (%lld)", (long long)a->H, (long long)a->G, (long long)a->rope_dim, (long long)a->D)
                : 0);
}

/* The arrays of attention_batch but the caches: qkv (N, n_heads + 2 n_kv_heads, D) float32, written, heads side by
 * side, rows any whole number of floats apart; out (N, n_heads * D) float32, C-contiguous, written; cos and sin
 * (positions, rope_dim / 2) float32, C-contiguous; sinks None or (n_heads,) float32. b[0 .. 4) and b[5 + 2 B] get
 * their views. */
static int batch_arrays(const char *fn, PyObject *const *args, int64_t N, batch_args_t *a, Py_buffer *b)
{
    const int64_t heads = a->H + 2 * a->G, qkv_shape[3] = {N, heads, a->D}, half = a->rope_dim / 2;
    int64_t qs[3];
    if (get_strided(fn, "qkv", args[4], F32, 1, 3, qkv_shape, qs, &b[0]) ||
        get_contiguous(fn, "out", args[11], F32, 1, mul(mul(N, a->H), mul(a->D, 4)), &b[1]) ||
        get_tables(fn, args[12], args[13], half, &b[2], &a->positions) ||
        get_sinks(fn, args[16], a->H, &b[5 + 2 * a->B], &a->sinks))
        return -1;
    if (qs[1] != 0 && qs[1] != a->D)
        return fail(fn, "qkv's heads must lie side by side (a head stride of D = %lld floats), got %lld",
                    (long long)a->D, (long long)qs[1]);
    a->qkv_row = qs[0];
    a->qkv = b[0].buf, a->out = b[1].buf, a->cos = b[2].buf, a->sin = b[3].buf;
    return 0;
}

/* attention_batch(desc, keys, values, layer, qkv, n_heads, n_kv_heads, D, kv_type, scale, window, out, cos, sin,
 * rope_dim, interleaved, sinks): one layer's attention for B sequences packed in qkv (N, n_heads + 2 n_kv_heads,
 * D), the rows of each after the previous one's; sinks None or (n_heads,) float32 (attention.h). desc is B x 2
 * int64: each sequence's row count T and cache offset; keys and values are tuples of each sequence's cache arrays
 * (n_layers, n_kv_heads, max_tokens, row), C-contiguous. Per sequence, as rope, the cache update and attention
 * do one by one: RoPE on its q and k heads (positions offset ..), its k and v rows stored at the cache offset,
 * then attention of its rows over keys 0 .. offset + T into out (N, n_heads * D) at its first row; the attention
 * of all sequences runs as one dispatch. */
static PyObject *py_attention_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "attention_batch";
    batch_args_t a = {0};
    if (arg_count(fn, nargs, 17, "desc, keys, values, layer, qkv, n_heads, n_kv_heads, D, kv_type, scale, window, "
                                 "out, cos, sin, rope_dim, interleaved, sinks") ||
        batch_scalars(fn, args, &a))
        return NULL;
    PyObject *keys = args[1], *values = args[2];
    if (!PyTuple_Check(keys) || !PyTuple_Check(values)) {
        fail(fn, "keys and values must be tuples of one array per sequence, got %s and %s", Py_TYPE(keys)->tp_name,
             Py_TYPE(values)->tp_name);
        return NULL;
    }
    if (PyTuple_GET_SIZE(keys) != PyTuple_GET_SIZE(values)) {
        fail(fn, "keys and values must hold one array per sequence each, got %zd and %zd", PyTuple_GET_SIZE(keys),
             PyTuple_GET_SIZE(values));
        return NULL;
    }
    const Py_ssize_t B = PyTuple_GET_SIZE(keys);
    /* qkv, out, cos, sin, desc, then B keys and B values, then sinks */
    Py_buffer *b = calloc((size_t)(6 + 2 * B), sizeof *b);
    a.seqs = calloc((size_t)(B > 0 ? B : 1), sizeof *a.seqs);
    attn_t *attn = malloc((size_t)(B > 0 ? B : 1) * sizeof *attn);
    PyObject *result = NULL;
    if (!b || !a.seqs || !attn) {
        PyErr_NoMemory();
        goto done;
    }
    a.B = B;
    for (Py_ssize_t i = 0; i < B; i++)
        a.seqs[i] = (batch_seq_t){.keys = &b[5 + i], .values = &b[5 + B + i]};
    int64_t N = 0, end = 0;
    if (get_desc(fn, args[0], &a, &b[4], &N, &end) || batch_arrays(fn, args, N, &a, b))
        goto done;
    if (end > a.positions) {
        fail(fn, "a sequence reaches position %lld, beyond the rotary tables' %lld", (long long)end,
             (long long)a.positions);
        goto done;
    }
    for (Py_ssize_t i = 0; i < B; i++)
        if (get_cache(fn, keys, values, i, &a, &a.seqs[i]))
            goto done;
    Py_BEGIN_ALLOW_THREADS
    batch_run(&a, attn);
    Py_END_ALLOW_THREADS
    result = Py_None;
    Py_INCREF(result);
done:
    if (b)
        release(b, 6 + 2 * B);
    free(b);
    free(a.seqs);
    free(attn);
    return result;
}

/* kv_quantize_q8_0(x, out, heads, rows, D): x (heads, rows, D) float32 as Q8_0 blocks into out (heads, rows,
 * D / 32 * 34) uint8 (written); both with a contiguous last dimension and any other strides (see attention.h). */
static PyObject *py_kv_quantize_q8_0(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "kv_quantize_q8_0";
    int64_t heads = 0, rows = 0, D = 0;
    if (arg_count(fn, nargs, 5, "x, out, heads, rows, D") || size_arg(fn, "heads", args[2], 0, &heads) ||
        size_arg(fn, "rows", args[3], 0, &rows) || size_arg(fn, "D", args[4], QBLOCK, &D))
        return NULL;
    if (D % QBLOCK) {
        fail(fn, "D must be a multiple of %d, got %lld", QBLOCK, (long long)D);
        return NULL;
    }
    const int64_t x_shape[3] = {heads, rows, D}, out_shape[3] = {heads, rows, D / QBLOCK * Q8_0_BYTES};
    int64_t xs[3], os[3];
    Py_buffer b[2] = {{0}};
    if (get_strided(fn, "x", args[0], F32, 0, 3, x_shape, xs, &b[0]) ||
        get_strided(fn, "out", args[1], U8, 1, 3, out_shape, os, &b[1])) {
        release(b, 2);
        return NULL;
    }
    kv_quantize_q8_0(b[0].buf, xs[0], xs[1], b[1].buf, os[0], os[1], heads, rows, D);
    release(b, 2);
    Py_RETURN_NONE;
}

/* rms_norm(x, w, out, T, d, eps): x (T, d), w (d), out (T, d) float32, C-contiguous, out written (see
 * elementwise.h); likewise the arrays of silu_mul. */
static PyObject *py_rms_norm(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "rms_norm";
    int64_t T = 0, d = 0;
    double eps = 0.0;
    if (arg_count(fn, nargs, 6, "x, w, out, T, d, eps") || size_arg(fn, "T", args[3], 0, &T) ||
        size_arg(fn, "d", args[4], 1, &d) || float_arg(fn, "eps", args[5], &eps))
        return NULL;
    Py_buffer b[3] = {{0}};
    if (get_contiguous(fn, "x", args[0], F32, 0, mul(mul(T, d), 4), &b[0]) ||
        get_contiguous(fn, "w", args[1], F32, 0, mul(d, 4), &b[1]) ||
        get_contiguous(fn, "out", args[2], F32, 1, mul(mul(T, d), 4), &b[2])) {
        release(b, 3);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rms_norm_run(b[0].buf, b[1].buf, b[2].buf, T, d, eps, n_threads);
    Py_END_ALLOW_THREADS
    release(b, 3);
    Py_RETURN_NONE;
}

/* rope(x, T, n_heads, D, cos, sin, start, rope_dim, interleaved): x (T, n_heads, D) float32, written in place, heads
 * side by side (a head stride of D), rows any whole number of floats apart; cos and sin (positions >= start + T,
 * rope_dim / 2) float32, C-contiguous (see elementwise.h). */
static PyObject *py_rope(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "rope";
    int64_t T = 0, H = 0, D = 0, start = 0, rope_dim = 0, interleaved = 0;
    if (arg_count(fn, nargs, 9, "x, T, n_heads, D, cos, sin, start, rope_dim, interleaved") ||
        size_arg(fn, "T", args[1], 0, &T) || size_arg(fn, "n_heads", args[2], 0, &H) ||
        size_arg(fn, "D", args[3], 1, &D) || size_arg(fn, "start", args[6], 0, &start) ||
        size_arg(fn, "rope_dim", args[7], 2, &rope_dim) || int_arg(fn, "interleaved", args[8], 0, 1, &interleaved))
        return NULL;
    if (rope_dim % 2 || rope_dim > D) {
        fail(fn, "rope_dim must be even and at most D = %lld, got %lld", (long long)D, (long long)rope_dim);
        return NULL;
    }
    const int64_t shape[3] = {T, H, D}, half = rope_dim / 2;
    int64_t xs[3], positions;
    Py_buffer b[3] = {{0}};
    if (get_strided(fn, "x", args[0], F32, 1, 3, shape, xs, &b[0]) ||
        get_tables(fn, args[4], args[5], half, &b[1], &positions) ||
        (start + T > positions ? fail(fn, "positions %lld .. %lld are beyond the rotary tables' %lld", (long long)start,
                                      (long long)(start + T - 1), (long long)positions) : 0) ||
        (xs[1] != 0 && xs[1] != D ? fail(fn, "x's heads must lie side by side (a head stride of D = %lld floats), got "
                                             "%lld", (long long)D, (long long)xs[1]) : 0)) {
        release(b, 3);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rope_run(b[0].buf, xs[0], T, H, D, b[1].buf, b[2].buf, start, rope_dim, (int)interleaved, n_threads);
    Py_END_ALLOW_THREADS
    release(b, 3);
    Py_RETURN_NONE;
}

/* silu_mul(gate_up, out, T, F): gate_up (T, 2F) and out (T, F), see rms_norm. */
static PyObject *py_silu_mul(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "silu_mul";
    int64_t T = 0, F = 0;
    if (arg_count(fn, nargs, 4, "gate_up, out, T, F") || size_arg(fn, "T", args[2], 0, &T) ||
        size_arg(fn, "F", args[3], 1, &F))
        return NULL;
    Py_buffer b[2] = {{0}};
    if (get_contiguous(fn, "gate_up", args[0], F32, 0, mul(mul(T, F), 8), &b[0]) ||
        get_contiguous(fn, "out", args[1], F32, 1, mul(mul(T, F), 4), &b[1])) {
        release(b, 2);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    silu_mul_run(b[0].buf, b[1].buf, T, F, n_threads);
    Py_END_ALLOW_THREADS
    release(b, 2);
    Py_RETURN_NONE;
}

/* route(logits, ids, weights, N, E, k, normalize): logits (N, E) float32; ids (N, k) int64 and weights (N, k) float32
 * written; 1 <= k <= E (see elementwise.h). */
static PyObject *py_route(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "route";
    int64_t N = 0, E = 0, k = 0, normalize = 0;
    if (arg_count(fn, nargs, 7, "logits, ids, weights, N, E, k, normalize") || size_arg(fn, "N", args[3], 0, &N) ||
        size_arg(fn, "E", args[4], 1, &E) || int_arg(fn, "k", args[5], 1, E, &k) ||
        int_arg(fn, "normalize", args[6], 0, 1, &normalize))
        return NULL;
    Py_buffer b[3] = {{0}};
    if (get_contiguous(fn, "logits", args[0], F32, 0, mul(mul(N, E), 4), &b[0]) ||
        get_contiguous(fn, "ids", args[1], I64, 1, mul(mul(N, k), 8), &b[1]) ||
        get_contiguous(fn, "weights", args[2], F32, 1, mul(mul(N, k), 4), &b[2])) {
        release(b, 3);
        return NULL;
    }
    double *shifted = malloc((size_t)E * (sizeof *shifted + 1)); /* E exps, then E taken flags */
    if (!shifted) {
        release(b, 3);
        return PyErr_NoMemory();
    }
    route_run(b[0].buf, N, E, k, (int)normalize, shifted, (uint8_t *)(shifted + E), b[1].buf, b[2].buf);
    free(shifted);
    release(b, 3);
    Py_RETURN_NONE;
}

/* combine_experts(rows, weights, order, out, N, k, d): rows (N * k, d) float32, product row r holding (token, slot)
 * pair order[r]; order (N * k,) int64, a permutation of 0 .. N * k - 1; weights (N, k) float32; out (N, d) written:
 * each token's slots' rows, weighted, summed in slot order (see elementwise.h). */
static PyObject *py_combine_experts(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    static const char fn[] = "combine_experts";
    int64_t N = 0, k = 0, d = 0;
    if (arg_count(fn, nargs, 7, "rows, weights, order, out, N, k, d") || size_arg(fn, "N", args[4], 0, &N) ||
        size_arg(fn, "k", args[5], 1, &k) || size_arg(fn, "d", args[6], 1, &d))
        return NULL;
    const int64_t M = mul(N, k);
    Py_buffer b[4] = {{0}};
    if (get_contiguous(fn, "rows", args[0], F32, 0, mul(mul(M, d), 4), &b[0]) ||
        get_contiguous(fn, "weights", args[1], F32, 0, mul(M, 4), &b[1]) ||
        get_contiguous(fn, "order", args[2], I64, 0, mul(M, 8), &b[2]) ||
        get_contiguous(fn, "out", args[3], F32, 1, mul(mul(N, d), 4), &b[3])) {
        release(b, 4);
        return NULL;
    }
    int64_t *slots = malloc((size_t)(M > 0 ? M : 1) * sizeof *slots); /* the inverse of order: each pair's row */
    if (!slots) {
        release(b, 4);
        return PyErr_NoMemory();
    }
    const int64_t *order = b[2].buf;
    for (int64_t i = 0; i < M; i++)
        slots[i] = -1;
    for (int64_t r = 0; r < M; r++) {
        if (order[r] < 0 || order[r] >= M || slots[order[r]] >= 0) {
            fail(fn, "order must be a permutation of 0 .. %lld, got %lld at %lld", (long long)(M - 1),
                 (long long)order[r], (long long)r);
            free(slots);
            release(b, 4);
            return NULL;
        }
        slots[order[r]] = r;
    }
    Py_BEGIN_ALLOW_THREADS
    combine_experts_run(b[0].buf, b[1].buf, slots, b[3].buf, N, k, d, n_threads);
    Py_END_ALLOW_THREADS
    free(slots);
    release(b, 4);
    Py_RETURN_NONE;
}

/* set_num_threads(n): n in [1, MAX_THREADS] (deeproots.kernels.set_num_threads checks user input first). */
static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    int64_t n = 0;
    if (int_arg("set_num_threads", "n", arg, 1, MAX_THREADS, &n))
        return NULL;
    n_threads = (int)n;
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(n_threads);
}

/* set_amx_min_tokens(n): AMX for products of at least n tokens, 0 for never (the VNNI path; the same bits). */
static PyObject *py_set_amx_min_tokens(PyObject *self, PyObject *arg)
{
    (void)self;
    static const char fn[] = "set_amx_min_tokens";
    int64_t n = 0;
    if (int_arg(fn, "n", arg, 0, DIM_MAX, &n))
        return NULL;
    if (n > 0 && !amx_usable()) {
        fail(fn, "AMX cannot run here: %s", amx_init());
        return NULL;
    }
    amx_set_min_tokens(n);
    Py_RETURN_NONE;
}

static PyObject *py_get_amx_min_tokens(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLongLong(amx_min_tokens());
}

/* set_amx_emulation(flag): 1 makes the AMX path usable over software tiles (builds without AMX, with AVX-512: for
 * tests), 0 unusable again; AMX_EMULATION_BUILT says where it exists. The token threshold is set apart. */
static PyObject *py_set_amx_emulation(PyObject *self, PyObject *arg)
{
    (void)self;
    static const char fn[] = "set_amx_emulation";
    int64_t on = 0;
    if (int_arg(fn, "flag", arg, 0, 1, &on))
        return NULL;
    if (amx_set_emulation((int)on)) {
        fail(fn, "this build runs the real AMX instructions or has no AMX path: %s", amx_init());
        return NULL;
    }
    if (!on)
        amx_set_min_tokens(0);
    Py_RETURN_NONE;
}

static PyObject *py_get_amx_emulation(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyBool_FromLong(amx_emulating());
}

/* read_bytes(buf): read every byte of buf (uint8, C-contiguous) once on the kernel threads; returns a checksum
 * (deeproots.kernels.bandwidth times it). */
static PyObject *py_read_bytes(PyObject *self, PyObject *arg)
{
    (void)self;
    Py_buffer view = {0};
    if (get_view("read_bytes", "buf", arg, U8, 0, PyBUF_C_CONTIGUOUS, &view)) {
        PyBuffer_Release(&view);
        return NULL;
    }
    uint64_t sum;
    Py_BEGIN_ALLOW_THREADS
    sum = read_bytes_run(view.buf, view.len, n_threads);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLongLong(sum);
}

/* int8_probe(rounds): the compute probe (int8probe.h) on the kernel threads; returns the int8 operations done. */
static PyObject *py_int8_probe(PyObject *self, PyObject *arg)
{
    (void)self;
    int64_t rounds = 0, ops;
    if (int_arg("int8_probe", "rounds", arg, 0, INT8_PROBE_MAX_ROUNDS, &rounds))
        return NULL;
    Py_BEGIN_ALLOW_THREADS
    ops = int8_probe_run(rounds, n_threads);
    Py_END_ALLOW_THREADS
    return PyLong_FromLongLong(ops);
}

static PyMethodDef methods[] = {
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_FASTCALL, "out = x @ W.T over a packed weight"},
    {"linear_experts", (PyCFunction)(void (*)(void))py_linear_experts, METH_FASTCALL,
     "each expert's rows of x times its own packed weight, in one call"},
    {"group_bytes", (PyCFunction)(void (*)(void))py_group_bytes, METH_FASTCALL, "bytes per packed 16-row group"},
    {"pack_blocks", (PyCFunction)(void (*)(void))py_pack_blocks, METH_FASTCALL, "repack Q4_0/Q4_1/Q8_0 file rows"},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_FASTCALL, "causal GQA over a KV cache"},
    {"attention_batch", (PyCFunction)(void (*)(void))py_attention_batch, METH_FASTCALL,
     "RoPE, cache update and causal GQA of several sequences"},
    {"kv_quantize_q8_0", (PyCFunction)(void (*)(void))py_kv_quantize_q8_0, METH_FASTCALL, "KV rows to Q8_0 blocks"},
    {"rms_norm", (PyCFunction)(void (*)(void))py_rms_norm, METH_FASTCALL, "RMSNorm of rows"},
    {"rope", (PyCFunction)(void (*)(void))py_rope, METH_FASTCALL, "rotary embeddings in place"},
    {"silu_mul", (PyCFunction)(void (*)(void))py_silu_mul, METH_FASTCALL, "silu(gate) * up"},
    {"route", (PyCFunction)(void (*)(void))py_route, METH_FASTCALL, "softmax top-k routing of a mixture of experts"},
    {"combine_experts", (PyCFunction)(void (*)(void))py_combine_experts, METH_FASTCALL,
     "the weighted sum of each token's expert rows"},
    {"set_num_threads", py_set_num_threads, METH_O, "threads used by the kernels"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "threads used by the kernels"},
    {"set_amx_min_tokens", py_set_amx_min_tokens, METH_O, "AMX for products of at least n tokens (0: never)"},
    {"get_amx_min_tokens", py_get_amx_min_tokens, METH_NOARGS, "AMX's token threshold (0: off)"},
    {"set_amx_emulation", py_set_amx_emulation, METH_O, "the AMX path over software tiles (1) or not (0)"},
    {"get_amx_emulation", py_get_amx_emulation, METH_NOARGS, "whether the AMX path runs over software tiles"},
    {"read_bytes", py_read_bytes, METH_O, "read a buffer once on the kernel threads (bandwidth probe)"},
    {"int8_probe", py_int8_probe, METH_O, "int8 dot products on the kernel threads (compute probe)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_cpu", .m_doc = "deeproots compiled CPU kernels", .m_size = -1, .m_methods = methods};

/* InternalError from deeproots.errors, kept for the module's lifetime. */
static int import_internal_error(void)
{
    PyObject *errors = PyImport_ImportModule("deeproots.errors");
    if (!errors)
        return -1;
    internal_error = PyObject_GetAttrString(errors, "InternalError");
    Py_DECREF(errors);
    return internal_error ? 0 : -1;
}

/* FILE_BLOCK_BYTES: {type id: (values, bytes)} of the file blocks the C core reads (pack_blocks, q8_0 caches). */
static int add_block_geometry(PyObject *m)
{
    PyObject *blocks = Py_BuildValue("{i(ii)i(ii)i(ii)}", T_Q4_0, QBLOCK, Q4_0_BYTES, T_Q4_1, QBLOCK, Q4_1_BYTES,
                                     T_Q8_0, QBLOCK, Q8_0_BYTES);
    if (!blocks || PyModule_AddObject(m, "FILE_BLOCK_BYTES", blocks)) { /* steals blocks only on success */
        Py_XDECREF(blocks);
        return -1;
    }
    return 0;
}

/* AMX's status once per process; DEEPROOTS_AMX=0 keeps the VNNI path for every product. */
static const char *start_amx(void)
{
    const char *status = amx_init(), *env = getenv("DEEPROOTS_AMX");
    if (amx_usable() && !(env && strcmp(env, "0") == 0))
        amx_set_min_tokens(AMX_MIN_TOKENS);
    return status;
}

PyMODINIT_FUNC PyInit__cpu(void)
{
    if (!internal_error && import_internal_error())
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddStringConstant(m, "ISA", ISA_NAME) || PyModule_AddStringConstant(m, "AMX", start_amx()) ||
              PyModule_AddIntConstant(m, "AMX_MIN_TOKENS", AMX_MIN_TOKENS) ||
              PyModule_AddIntConstant(m, "AMX_EMULATION_BUILT", amx_emulation_built()) || PyModule_AddIntConstant(m, "ROWS", ROWS) ||
              PyModule_AddIntConstant(m, "MAX_THREADS", MAX_THREADS) ||
              PyModule_AddIntConstant(m, "INT8_PROBE_OPS_PER_ROUND", INT8_PROBE_OPS_PER_ROUND) ||
              PyModule_AddIntConstant(m, "INT8_PROBE_MAX_ROUNDS", INT8_PROBE_MAX_ROUNDS) || add_block_geometry(m))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
