/* The Python extension deeproots.kernels._cpu: thin entry points over the kernels, threading and scratch.
 *
 * Calls go through METH_FASTCALL, so a call costs well under a microsecond before the kernel runs. A pointer argument
 * is a numpy array (any object exporting the buffer protocol, read-only and strided views included: the address of
 * its first element is taken) or a plain int address. Threads come from pool.c; the GIL is released while the
 * kernels run.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "attention.h"
#include "elementwise.h"
#include "pool.h"
#include "qgemm.h"

#define FLOAT_ROWS 4 /* fgemm's row tile: threads split rows in multiples of it */
#define MIN_BLOCKS_PER_THREAD 64 /* below this much work (16-row x 32-value blocks x tokens) a thread is not worth it */
#define PRIVATE_QUANT_BLOCKS 128 /* up to this many activation blocks every thread quantizes x itself: no barrier */

static int n_threads = 1;

/* The calling thread's scratch for quantized activations: grown on demand, kept for the next call. */
static _Thread_local struct {
    void *p;
    size_t size;
} scratch;

static void *scratch_get(size_t size)
{
    if (size > scratch.size) {
        free(scratch.p);
        size = (size + 4095) & ~(size_t)4095;
        scratch.p = aligned_alloc(64, size);
        scratch.size = scratch.p ? size : 0;
    }
    return scratch.p;
}

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

/* Scratch of this thread laid out for T x K activations, or 0 when memory ran out. */
static int act_alloc(act_t *a, int64_t T, int64_t K)
{
    const int64_t nb = K / QBLOCK;
    const size_t q_bytes = ((size_t)(T * K) + 63) & ~(size_t)63;
    uint8_t *buf = scratch_get(q_bytes + (size_t)(T * nb) * (2 * sizeof(float) + 2 * sizeof(int32_t)));
    if (!buf)
        return 0;
    float *d = (float *)(buf + q_bytes);
    *a = (act_t){(int8_t *)buf, d, d + T * nb, (int32_t *)(d + 2 * T * nb), T, K, nb};
    return 1;
}

static void quantize_into(const act_t *a, const float *x, int64_t t0, int64_t t1)
{
    quantize_activations(x, t0, t1, a->K, (int8_t *)a->q, (float *)a->d, (float *)a->s, (int32_t *)a->sq);
}

static void groups_part(const job_t *job, const act_t *a, int i, int n)
{
    const int64_t groups = (job->N + ROWS - 1) / ROWS;
    qgemm_groups(job->type, job->w, groups * i / n, groups * (i + 1) / n, job->N, a, job->out);
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

static int as_int64(PyObject *o, int64_t *v)
{
    *v = PyLong_AsLongLong(o);
    return *v == -1 && PyErr_Occurred() ? -1 : 0;
}

/* *v = the address of o's first element: o is an int, or exports the buffer protocol (a numpy array). PyBUF_STRIDES
 * without PyBUF_WRITABLE accepts read-only and non-contiguous views, whose buf is still their first element. The
 * view is released at once: the caller keeps o alive for the call. 0-d buffers are refused: a numpy integer scalar
 * (an address read out of an array) exports one, and its own address is not the one meant. */
static int as_pointer(PyObject *o, int64_t *v)
{
    if (PyLong_Check(o))
        return as_int64(o, v);
    Py_buffer view;
    if (PyObject_GetBuffer(o, &view, PyBUF_STRIDES))
        return -1;
    const int ndim = view.ndim;
    *v = (int64_t)(intptr_t)view.buf;
    PyBuffer_Release(&view);
    if (ndim == 0) {
        PyErr_SetString(PyExc_TypeError, "a pointer argument must be an array of at least one dimension or an int");
        return -1;
    }
    return 0;
}

#define PTR(i) (1u << (i)) /* marks argument i as a pointer in an argument mask */

/* v[i] = args[i] as an int, or as a pointer (as_pointer) where `pointers` has PTR(i). */
static int arg_int64(PyObject *const *args, int i, unsigned pointers, int64_t *v)
{
    return pointers & PTR(i) ? as_pointer(args[i], &v[i]) : as_int64(args[i], &v[i]);
}

/* v[0 .. n) = args[0 .. n) as ints or pointers (see arg_int64), or -1 with TypeError naming `usage` unless exactly
 * `wanted` arguments came. */
static int int_args(PyObject *const *args, Py_ssize_t nargs, Py_ssize_t wanted, int64_t *v, int n, unsigned pointers,
                    const char *usage)
{
    if (nargs != wanted) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (arg_int64(args, i, pointers, v))
            return -1;
    return 0;
}

/* linear(type, w, N, K, x, T, out): out (T, N) = x (T, K) @ W.T for W packed as described in qgemm.h; w, x and out
 * are pointers (arrays or int addresses), as in every entry point below. The caller (deeproots/kernels/packed.py)
 * has validated every pointer, shape and dtype. */
static PyObject *py_linear(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t v[7];
    if (int_args(args, nargs, 7, v, 7, PTR(1) | PTR(4) | PTR(6),
                 "linear(type, w, N, K, x, T, out) takes 7 arguments: arrays (or int addresses) w, x, out; ints"))
        return NULL;
    const int type = (int)v[0];
    const int64_t N = v[2], K = v[3], T = v[5];
    if (N <= 0 || K <= 0 || T < 0 || !(is_float_type(type) || qgemm_group_bytes(type, K) > 0)) {
        PyErr_SetString(PyExc_ValueError, "linear: unsupported type or bad sizes");
        return NULL;
    }
    job_t job = {.type = type, .w = (const uint8_t *)(intptr_t)v[1], .N = N, .K = K, .T = T,
                 .x = (const float *)(intptr_t)v[4], .out = (float *)(intptr_t)v[6]};
    int rc = 0;
    if (T > 0) {
        Py_BEGIN_ALLOW_THREADS
        rc = run_linear(&job);
        Py_END_ALLOW_THREADS
    }
    if (rc)
        return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* group_bytes(type, K) -> bytes of one packed 16-row group, or -1 where the type has no quantized kernel. */
static PyObject *py_group_bytes(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t type, K;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "group_bytes(type, K) takes 2 ints");
        return NULL;
    }
    if (as_int64(args[0], &type) || as_int64(args[1], &K))
        return NULL;
    return PyLong_FromLongLong(qgemm_group_bytes((int)type, K));
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

/* pack_blocks(type, src, n, K, dst): repack a Q4_0 / Q4_1 / Q8_0 weight's file rows src (n, K / 32 blocks) into
 * dst (ceil(n / 16) groups of group_bytes(type, K)), groups split over the threads. The caller
 * (deeproots/kernels/layouts.py) has checked the sizes. */
static PyObject *py_pack_blocks(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t v[5];
    if (int_args(args, nargs, 5, v, 5, PTR(1) | PTR(4),
                 "pack_blocks(type, src, n, K, dst) takes 5 arguments: arrays (or int addresses) src, dst; ints"))
        return NULL;
    pack_job_t job = {(int)v[0], (const uint8_t *)(intptr_t)v[1], v[2], v[3], (uint8_t *)(intptr_t)v[4]};
    if (job.n <= 0 || job.type == T_Q4_K || job.type == T_Q5_K || job.type == T_Q6_K ||
        qgemm_group_bytes(job.type, job.K) <= 0) {
        PyErr_SetString(PyExc_ValueError, "pack_blocks: the type must be Q4_0, Q4_1 or Q8_0, with n > 0 and K % 32 == 0");
        return NULL;
    }
    const int64_t groups = (job.n + ROWS - 1) / ROWS;
    Py_BEGIN_ALLOW_THREADS
    pool_run(pack_part, &job, threads_for(groups * (job.K / QBLOCK), groups));
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* Parse nargs == n arguments into ints or pointers v[i] (see arg_int64), except v[float_index], which goes to *f as
 * a double. */
static int parse_ints_and_one_float(PyObject *const *args, Py_ssize_t nargs, int n, int float_index, unsigned pointers,
                                    int64_t *v, double *f, const char *usage)
{
    if (nargs != n) {
        PyErr_SetString(PyExc_TypeError, usage);
        return -1;
    }
    for (int i = 0; i < n; i++) {
        if (i == float_index) {
            *f = PyFloat_AsDouble(args[i]);
            if (*f == -1.0 && PyErr_Occurred())
                return -1;
        } else if (arg_int64(args, i, pointers, v)) {
            return -1;
        }
    }
    return 0;
}

/* attention(q, q_head, q_row, k, k_head, k_row, v, v_head, v_row, kv_type, n_heads, n_kv_heads, T, L, D, scale, out,
 * window): the fields of attn_t (attention.h), strides in elements. The caller
 * (deeproots/kernels/attention.py) has validated every pointer, stride and shape. */
static PyObject *py_attention(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    enum { SCALE = 15, NARGS = 18 };
    int64_t v[NARGS];
    double scale = 0.0;
    if (parse_ints_and_one_float(args, nargs, NARGS, SCALE, PTR(0) | PTR(3) | PTR(6) | PTR(16), v, &scale,
                                 "attention takes 18 arguments: arrays (or int addresses) q, k, v, out at 0, 3, 6, "
                                 "16, the float scale at 15, ints"))
        return NULL;
    const attn_t a = {.q = (const float *)(intptr_t)v[0], .q_head = v[1], .q_row = v[2],
                      .k = (const uint8_t *)(intptr_t)v[3], .k_head = v[4], .k_row = v[5],
                      .v = (const uint8_t *)(intptr_t)v[6], .v_head = v[7], .v_row = v[8], .kv_type = (int)v[9],
                      .n_heads = v[10], .n_kv_heads = v[11], .T = v[12], .L = v[13], .D = v[14],
                      .scale = (float)scale, .out = (float *)(intptr_t)v[16], .window = v[17]};
    const int type_ok = a.kv_type == T_F32 || a.kv_type == T_F16 || (a.kv_type == T_Q8_0 && a.D % QBLOCK == 0);
    if (!type_ok || a.n_kv_heads <= 0 || a.n_heads % a.n_kv_heads || a.n_heads <= 0 || a.T < 0 || a.T > a.L ||
        a.D <= 0 || a.window < 0) {
        PyErr_SetString(PyExc_ValueError, "attention: unsupported kv type or bad sizes");
        return NULL;
    }
    if (a.T > 0) {
        Py_BEGIN_ALLOW_THREADS
        attention_run(&a, n_threads);
        Py_END_ALLOW_THREADS
    }
    Py_RETURN_NONE;
}

/* attention_batch(desc, B, layer, qkv, qkv_row, n_heads, n_kv_heads, D, kv_type, scale, window, out, cos, sin,
 * rope_dim, interleaved): one layer's attention for B sequences packed in qkv (N, n_heads + 2
 * n_kv_heads, D) f32, rows qkv_row floats apart. desc is B x BATCH_FIELDS int64: each sequence's first row, row count
 * T, cache offset, cache key and value base pointers (layer 0), and the caches' layer, head and row strides in
 * elements (bytes for q8_0). Per sequence, as rope, the cache update and attention do one by one: RoPE on its q and k
 * heads (positions offset ..), its k and v rows stored at the cache offset, then attention of its rows over keys
 * 0 .. offset + T into out (N, n_heads * D) at its first row; the attention of all sequences runs as one dispatch.
 * The caller (deeproots/kernels/attention.py) has validated every pointer, stride and shape. */
enum { BATCH_FIELDS = 8 };
static PyObject *py_attention_batch(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    enum { SCALE = 9, NARGS = 16 };
    int64_t v[NARGS];
    double scale = 0.0;
    if (parse_ints_and_one_float(args, nargs, NARGS, SCALE, PTR(0) | PTR(3) | PTR(11) | PTR(12) | PTR(13), v, &scale,
                                 "attention_batch takes 16 arguments: arrays (or int addresses) desc, qkv, out, cos, "
                                 "sin at 0, 3, 11, 12, 13, the float scale at 9, ints"))
        return NULL;
    const int64_t *desc = (const int64_t *)(intptr_t)v[0], B = v[1], layer = v[2], qkv_row = v[4], H = v[5],
                  G = v[6], D = v[7], window = v[10], rope_dim = v[14];
    float *qkv = (float *)(intptr_t)v[3], *out = (float *)(intptr_t)v[11];
    const int type = (int)v[8], interleaved = v[15] != 0;
    const float *cos = (const float *)(intptr_t)v[12], *sin = (const float *)(intptr_t)v[13];
    const int type_ok = type == T_F32 || type == T_F16 || (type == T_Q8_0 && D % QBLOCK == 0);
    if (!type_ok || B < 0 || layer < 0 || G <= 0 || H <= 0 || H % G || D <= 0 || window < 0 || rope_dim <= 0 ||
        rope_dim % 2 || rope_dim > D) {
        PyErr_SetString(PyExc_ValueError, "attention_batch: unsupported kv type or bad sizes");
        return NULL;
    }
    attn_t *a = malloc((size_t)(B > 0 ? B : 1) * sizeof *a);
    if (!a)
        return PyErr_NoMemory();
    const int64_t es = type == T_F32 ? 4 : type == T_F16 ? 2 : 1;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t b = 0; b < B; b++) {
        const int64_t *f = desc + b * BATCH_FIELDS;
        const int64_t row0 = f[0], T = f[1], offset = f[2], layer_stride = f[5], head = f[6], row = f[7];
        float *x = qkv + row0 * qkv_row;
        uint8_t *k = (uint8_t *)(intptr_t)f[3] + layer * layer_stride * es;
        uint8_t *vv = (uint8_t *)(intptr_t)f[4] + layer * layer_stride * es;
        if (T > 0) {
            rope_run(x, qkv_row, T, H + G, D, cos, sin, offset, rope_dim, interleaved, n_threads);
            kv_store(type, x + H * D, D, qkv_row, k + offset * row * es, head, row, G, T, D);
            kv_store(type, x + (H + G) * D, D, qkv_row, vv + offset * row * es, head, row, G, T, D);
        }
        a[b] = (attn_t){.q = x, .q_head = D, .q_row = qkv_row, .k = k, .k_head = head, .k_row = row, .v = vv,
                        .v_head = head, .v_row = row, .kv_type = type, .n_heads = H, .n_kv_heads = G, .T = T,
                        .L = offset + T, .D = D, .scale = (float)scale, .out = out + row0 * H * D, .window = window};
    }
    attention_batch_run(a, B, n_threads);
    Py_END_ALLOW_THREADS
    free(a);
    Py_RETURN_NONE;
}

/* kv_quantize_q8_0(x, x_head, x_row, out, out_head, out_row, heads, rows, D): see attention.h. The caller
 * (deeproots/kernels/attention.py) has validated every pointer, stride and shape. */
static PyObject *py_kv_quantize_q8_0(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t v[9];
    if (int_args(args, nargs, 9, v, 9, PTR(0) | PTR(3),
                 "kv_quantize_q8_0(x, x_head, x_row, out, out_head, out_row, heads, rows, D) takes 9 arguments: "
                 "arrays (or int addresses) x, out; ints"))
        return NULL;
    if (v[6] < 0 || v[7] < 0 || v[8] <= 0 || v[8] % QBLOCK) {
        PyErr_SetString(PyExc_ValueError, "kv_quantize_q8_0: bad sizes");
        return NULL;
    }
    kv_quantize_q8_0((const float *)(intptr_t)v[0], v[1], v[2], (uint8_t *)(intptr_t)v[3], v[4], v[5], v[6], v[7],
                     v[8]);
    Py_RETURN_NONE;
}

/* rms_norm(x, w, out, T, d, eps): see elementwise.h. The caller (deeproots/kernels/elementwise.py) has
 * validated every pointer and shape; likewise for rope and silu_mul. */
static PyObject *py_rms_norm(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t v[5];
    if (int_args(args, nargs, 6, v, 5, PTR(0) | PTR(1) | PTR(2),
                 "rms_norm(x, w, out, T, d, eps) takes arrays (or int addresses) x, w, out, ints T, d and a float"))
        return NULL;
    const double eps = PyFloat_AsDouble(args[5]);
    if (eps == -1.0 && PyErr_Occurred())
        return NULL;
    if (v[3] < 0 || v[4] <= 0) {
        PyErr_SetString(PyExc_ValueError, "rms_norm: bad sizes");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rms_norm_run((const float *)(intptr_t)v[0], (const float *)(intptr_t)v[1], (float *)(intptr_t)v[2], v[3], v[4],
                 eps, n_threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* rope(x, row_stride, T, n_heads, D, cos, sin, start, rope_dim, interleaved): see elementwise.h. */
static PyObject *py_rope(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t v[10];
    if (int_args(args, nargs, 10, v, 10, PTR(0) | PTR(5) | PTR(6),
                 "rope(x, row_stride, T, n_heads, D, cos, sin, start, rope_dim, interleaved) takes 10 arguments: "
                 "arrays (or int addresses) x, cos, sin; ints"))
        return NULL;
    const int64_t T = v[2], n_heads = v[3], D = v[4], start = v[7], rope_dim = v[8];
    if (T < 0 || n_heads < 0 || start < 0 || rope_dim <= 0 || rope_dim % 2 || rope_dim > D) {
        PyErr_SetString(PyExc_ValueError, "rope: bad sizes");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rope_run((float *)(intptr_t)v[0], v[1], T, n_heads, D, (const float *)(intptr_t)v[5], (const float *)(intptr_t)v[6],
             start, rope_dim, v[9] != 0, n_threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

/* silu_mul(gate_up, out, T, F): see elementwise.h. */
static PyObject *py_silu_mul(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    (void)self;
    int64_t v[4];
    if (int_args(args, nargs, 4, v, 4, PTR(0) | PTR(1),
                 "silu_mul(gate_up, out, T, F) takes 4 arguments: arrays (or int addresses) gate_up, out; ints"))
        return NULL;
    if (v[2] < 0 || v[3] <= 0) {
        PyErr_SetString(PyExc_ValueError, "silu_mul: bad sizes");
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    silu_mul_run((const float *)(intptr_t)v[0], (float *)(intptr_t)v[1], v[2], v[3], n_threads);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *py_set_num_threads(PyObject *self, PyObject *arg)
{
    (void)self;
    const long n = PyLong_AsLong(arg);
    if (n == -1 && PyErr_Occurred())
        return NULL;
    if (n < 1) {
        PyErr_SetString(PyExc_ValueError, "set_num_threads: need at least 1 thread");
        return NULL;
    }
    n_threads = (int)n;
    Py_RETURN_NONE;
}

static PyObject *py_get_num_threads(PyObject *self, PyObject *unused)
{
    (void)self;
    (void)unused;
    return PyLong_FromLong(n_threads);
}

static PyMethodDef methods[] = {
    {"linear", (PyCFunction)(void (*)(void))py_linear, METH_FASTCALL, "out = x @ W.T over a packed weight"},
    {"group_bytes", (PyCFunction)(void (*)(void))py_group_bytes, METH_FASTCALL, "bytes per packed 16-row group"},
    {"pack_blocks", (PyCFunction)(void (*)(void))py_pack_blocks, METH_FASTCALL, "repack Q4_0/Q4_1/Q8_0 file rows"},
    {"attention", (PyCFunction)(void (*)(void))py_attention, METH_FASTCALL, "causal GQA over a KV cache"},
    {"attention_batch", (PyCFunction)(void (*)(void))py_attention_batch, METH_FASTCALL,
     "RoPE, cache update and causal GQA of several sequences"},
    {"kv_quantize_q8_0", (PyCFunction)(void (*)(void))py_kv_quantize_q8_0, METH_FASTCALL, "KV rows to Q8_0 blocks"},
    {"rms_norm", (PyCFunction)(void (*)(void))py_rms_norm, METH_FASTCALL, "RMSNorm of rows"},
    {"rope", (PyCFunction)(void (*)(void))py_rope, METH_FASTCALL, "rotary embeddings in place"},
    {"silu_mul", (PyCFunction)(void (*)(void))py_silu_mul, METH_FASTCALL, "silu(gate) * up"},
    {"set_num_threads", py_set_num_threads, METH_O, "threads used by the kernels"},
    {"get_num_threads", py_get_num_threads, METH_NOARGS, "threads used by the kernels"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, .m_name = "_cpu", .m_doc = "deeproots compiled CPU kernels", .m_size = -1, .m_methods = methods};

PyMODINIT_FUNC PyInit__cpu(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m && (PyModule_AddStringConstant(m, "ISA", ISA_NAME) || PyModule_AddIntConstant(m, "ROWS", ROWS))) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
