/* Cache-blocked strided copy: the kernel behind transcoder.rules.transpose.

   permute(src, offset, dst, shape, strides, itemsize, dst_strides=None)

   Copies the strided view described by (offset, shape, strides) of the buffer `src` into the
   C-contiguous buffer `dst`:  dst[i0, ..., iN] = src[offset + sum(ik * strides[k])]; with
   `dst_strides` (bytes, the last one the item size), into that strided view of `dst` instead:
   a block of rows cut along an inner axis written straight to its places in a mapped output.
   All sizes are in bytes except `shape`. Every address the copy touches is checked against
   both buffers before the GIL is released, so a wrong call raises ValueError instead of
   reading or writing out of bounds.

   The work is a 2-D tile copy between two merged runs of axes: `a`, the destination's trailing
   axes (contiguous in the destination), and `b`, the axes the source is contiguous along, fastest
   first (a Conv1d kernel (out, in, k) -> (k, in, out) has a = out and b = (k, in): runs of k*in
   elements, not of k). The other side's offsets of each run are computed per cache block, so
   any permutation moves in whole register tiles. On x86-64 with AVX2, 4-byte elements move in
   8x8 register transposes and 2-byte elements in SSE2 8x8 transposes; everything else (and
   every other machine) uses a plain loop over the same blocks. Optional: without a compiler the
   package falls back to numpy (transcoder/rules/transpose.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#define MAX_DIMS 32
#define BLOCK 64 /* elements per side of a cache block */

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define HAVE_X86 1
#include <immintrin.h>
#endif

/* Axes merged into one index, fastest first; `step` is each one's byte stride on the side
   along which the run is not contiguous. */
typedef struct {
    int n;
    int axis[MAX_DIMS];
    Py_ssize_t ext[MAX_DIMS], step[MAX_DIMS];
    Py_ssize_t size; /* product of ext */
} Run;

/* The other side's byte offsets of run indices start .. start + count - 1. */
static void run_offsets(const Run *r, Py_ssize_t start, Py_ssize_t count, Py_ssize_t *out) {
    Py_ssize_t digit[MAX_DIMS], off = 0;
    for (int k = 0; k < r->n; k++) {
        digit[k] = start % r->ext[k];
        start /= r->ext[k];
        off += digit[k] * r->step[k];
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        out[i] = off;
        for (int k = 0; k < r->n; k++) {
            off += r->step[k];
            if (++digit[k] < r->ext[k]) break;
            off -= r->step[k] * r->ext[k];
            digit[k] = 0;
        }
    }
}

/* One cache block: dst[boff[b] + a*item] = src[aoff[a] + b*sb] for a < na, b < nb, where sb is
   the item size unless the source is contiguous along no axis. The source is `s` at the
   block's first b, the destination `d` at its first a. The edge loops copy what the 8x8 tiles
   left: a >= a_done for b < b_done, and every a for b >= b_done. */
#define SCALAR_EDGE(NAME, T)                                                                  \
    static void NAME(const char *s, Py_ssize_t sb, const Py_ssize_t *aoff, char *d,           \
                     const Py_ssize_t *boff, Py_ssize_t na, Py_ssize_t nb, Py_ssize_t a_done, \
                     Py_ssize_t b_done) {                                                     \
        for (Py_ssize_t b = 0; b < nb; b++) {                                                 \
            const char *srow = s + b * sb;                                                    \
            T *db = (T *)(d + boff[b]);                                                       \
            for (Py_ssize_t a = b < b_done ? a_done : 0; a < na; a++) {                       \
                T v;                                                                          \
                memcpy(&v, srow + aoff[a], sizeof(T));                                          \
                memcpy(db + a, &v, sizeof(T));                                                \
            }                                                                                 \
        }                                                                                     \
    }

SCALAR_EDGE(edge_1, uint8_t)
SCALAR_EDGE(edge_2, uint16_t)
SCALAR_EDGE(edge_4, uint32_t)
SCALAR_EDGE(edge_8, uint64_t)

#ifdef HAVE_X86
/* 8 source rows (along a) of 8 floats (along b) -> 8 destination rows (along b) of 8 floats. */
__attribute__((target("avx2"))) static inline void
t8x8_f32(const char *s, const Py_ssize_t *so, char *d, const Py_ssize_t *dof) {
    __m256 r0 = _mm256_loadu_ps((const float *)(s + so[0]));
    __m256 r1 = _mm256_loadu_ps((const float *)(s + so[1]));
    __m256 r2 = _mm256_loadu_ps((const float *)(s + so[2]));
    __m256 r3 = _mm256_loadu_ps((const float *)(s + so[3]));
    __m256 r4 = _mm256_loadu_ps((const float *)(s + so[4]));
    __m256 r5 = _mm256_loadu_ps((const float *)(s + so[5]));
    __m256 r6 = _mm256_loadu_ps((const float *)(s + so[6]));
    __m256 r7 = _mm256_loadu_ps((const float *)(s + so[7]));
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 u0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 u6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 u7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps((float *)(d + dof[0]), _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps((float *)(d + dof[1]), _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps((float *)(d + dof[2]), _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps((float *)(d + dof[3]), _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps((float *)(d + dof[4]), _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps((float *)(d + dof[5]), _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps((float *)(d + dof[6]), _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps((float *)(d + dof[7]), _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* The same for 2-byte elements, in 128-bit registers. */
static inline void t8x8_u16(const char *s, const Py_ssize_t *so, char *d, const Py_ssize_t *dof) {
    __m128i r0 = _mm_loadu_si128((const __m128i *)(s + so[0]));
    __m128i r1 = _mm_loadu_si128((const __m128i *)(s + so[1]));
    __m128i r2 = _mm_loadu_si128((const __m128i *)(s + so[2]));
    __m128i r3 = _mm_loadu_si128((const __m128i *)(s + so[3]));
    __m128i r4 = _mm_loadu_si128((const __m128i *)(s + so[4]));
    __m128i r5 = _mm_loadu_si128((const __m128i *)(s + so[5]));
    __m128i r6 = _mm_loadu_si128((const __m128i *)(s + so[6]));
    __m128i r7 = _mm_loadu_si128((const __m128i *)(s + so[7]));
    __m128i a0 = _mm_unpacklo_epi16(r0, r1), a1 = _mm_unpackhi_epi16(r0, r1);
    __m128i a2 = _mm_unpacklo_epi16(r2, r3), a3 = _mm_unpackhi_epi16(r2, r3);
    __m128i a4 = _mm_unpacklo_epi16(r4, r5), a5 = _mm_unpackhi_epi16(r4, r5);
    __m128i a6 = _mm_unpacklo_epi16(r6, r7), a7 = _mm_unpackhi_epi16(r6, r7);
    __m128i b0 = _mm_unpacklo_epi32(a0, a2), b1 = _mm_unpackhi_epi32(a0, a2);
    __m128i b2 = _mm_unpacklo_epi32(a1, a3), b3 = _mm_unpackhi_epi32(a1, a3);
    __m128i b4 = _mm_unpacklo_epi32(a4, a6), b5 = _mm_unpackhi_epi32(a4, a6);
    __m128i b6 = _mm_unpacklo_epi32(a5, a7), b7 = _mm_unpackhi_epi32(a5, a7);
    _mm_storeu_si128((__m128i *)(d + dof[0]), _mm_unpacklo_epi64(b0, b4));
    _mm_storeu_si128((__m128i *)(d + dof[1]), _mm_unpackhi_epi64(b0, b4));
    _mm_storeu_si128((__m128i *)(d + dof[2]), _mm_unpacklo_epi64(b1, b5));
    _mm_storeu_si128((__m128i *)(d + dof[3]), _mm_unpackhi_epi64(b1, b5));
    _mm_storeu_si128((__m128i *)(d + dof[4]), _mm_unpacklo_epi64(b2, b6));
    _mm_storeu_si128((__m128i *)(d + dof[5]), _mm_unpackhi_epi64(b2, b6));
    _mm_storeu_si128((__m128i *)(d + dof[6]), _mm_unpacklo_epi64(b3, b7));
    _mm_storeu_si128((__m128i *)(d + dof[7]), _mm_unpackhi_epi64(b3, b7));
}

/* Whole 8x8 tiles of one block, then the scalar edge. */
#define VECTOR_BLOCK(NAME, TILE, ITEM, EDGE, ATTR)                                            \
    ATTR static void NAME(const char *s, Py_ssize_t sb, const Py_ssize_t *aoff, char *d,      \
                          const Py_ssize_t *boff, Py_ssize_t na, Py_ssize_t nb) {             \
        Py_ssize_t na8 = na & ~(Py_ssize_t)7, nb8 = nb & ~(Py_ssize_t)7;                      \
        for (Py_ssize_t b = 0; b < nb8; b += 8)                                               \
            for (Py_ssize_t a = 0; a < na8; a += 8)                                           \
                TILE(s + b * ITEM, aoff + a, d + a * ITEM, boff + b);                         \
        EDGE(s, sb, aoff, d, boff, na, nb, na8, nb8);                                         \
    }

VECTOR_BLOCK(block_f32_avx2, t8x8_f32, 4, edge_4, __attribute__((target("avx2"))))
VECTOR_BLOCK(block_u16_sse2, t8x8_u16, 2, edge_2, )
#endif

#define SCALAR_BLOCK(NAME, EDGE)                                                              \
    static void NAME(const char *s, Py_ssize_t sb, const Py_ssize_t *aoff, char *d,           \
                     const Py_ssize_t *boff, Py_ssize_t na, Py_ssize_t nb) {                  \
        EDGE(s, sb, aoff, d, boff, na, nb, 0, 0);                                             \
    }

SCALAR_BLOCK(block_1, edge_1)
SCALAR_BLOCK(block_2, edge_2)
SCALAR_BLOCK(block_4, edge_4)
SCALAR_BLOCK(block_8, edge_8)

typedef void (*BlockFn)(const char *, Py_ssize_t, const Py_ssize_t *, char *, const Py_ssize_t *,
                        Py_ssize_t, Py_ssize_t);

static BlockFn block_for(Py_ssize_t item, Py_ssize_t sb, Py_ssize_t nb) {
#ifdef HAVE_X86
    if (sb == item && nb >= 8 && item == 4 && __builtin_cpu_supports("avx2")) return block_f32_avx2;
    if (sb == item && nb >= 8 && item == 2) return block_u16_sse2;
#endif
    (void)nb;
    (void)sb;
    switch (item) {
    case 1: return block_1;
    case 2: return block_2;
    case 4: return block_4;
    case 8: return block_8;
    default: return NULL;
    }
}

/* The plane of runs a and b; `a` indices are contiguous in the destination, `b` in the source
   (b * sb bytes from its start; sb is the item size but where the source is contiguous along
   no axis). */
typedef struct {
    Run a, b;
    Py_ssize_t item, sb;
    BlockFn block; /* NULL: an element size without a typed loop, copied with memcpy */
} Plane;

static void block_any(const char *s, const Plane *p, const Py_ssize_t *aoff, char *d,
                      const Py_ssize_t *boff, Py_ssize_t na, Py_ssize_t nb) {
    for (Py_ssize_t b = 0; b < nb; b++)
        for (Py_ssize_t a = 0; a < na; a++)
            memcpy(d + boff[b] + a * p->item, s + aoff[a] + b * p->sb, (size_t)p->item);
}

/* A block is BLOCK x BLOCK elements, or as many along a when b is shorter (up to MAX_A). */
#define MAX_A (8 * BLOCK)

static void copy_plane(const char *s, char *d, const Plane *p) {
    Py_ssize_t aoff[MAX_A], boff[BLOCK], item = p->item;
    Py_ssize_t ablock = p->b.size < BLOCK ? BLOCK * BLOCK / p->b.size : BLOCK;
    ablock = ablock > MAX_A ? MAX_A : ablock & ~(Py_ssize_t)7;
    for (Py_ssize_t b0 = 0; b0 < p->b.size; b0 += BLOCK) {
        Py_ssize_t nb = p->b.size - b0 < BLOCK ? p->b.size - b0 : BLOCK;
        run_offsets(&p->b, b0, nb, boff);
        for (Py_ssize_t a0 = 0; a0 < p->a.size; a0 += ablock) {
            Py_ssize_t na = p->a.size - a0 < ablock ? p->a.size - a0 : ablock;
            run_offsets(&p->a, a0, na, aoff);
            if (p->block)
                p->block(s + b0 * p->sb, p->sb, aoff, d + a0 * item, boff, na, nb);
            else
                block_any(s + b0 * p->sb, p, aoff, d + a0 * item, boff, na, nb);
        }
    }
}

static void run_add(Run *r, int axis, Py_ssize_t ext, Py_ssize_t step) {
    r->axis[r->n] = axis;
    r->ext[r->n] = ext;
    r->step[r->n] = step;
    r->n++;
    r->size *= ext;
}

/* The next destination axis before run a (skipping size-1 axes), or -1 if b holds it. */
static int next_a(const Run *a, const char *used, const Py_ssize_t *shape, const Py_ssize_t *ds,
                  Py_ssize_t item) {
    int k = a->axis[a->n - 1] - 1;
    while (k >= 0 && shape[k] == 1) k--;
    return k >= 0 && !used[k] && ds[k] == item * a->size ? k : -1; /* a stays contiguous in dst */
}

/* An unused axis along which the source continues run b contiguously, or -1. */
static int next_b(const Run *b, const char *used, int nd, const Py_ssize_t *shape,
                  const Py_ssize_t *ss, Py_ssize_t item) {
    for (int k = 0; k < nd; k++)
        if (!used[k] && shape[k] > 1 && ss[k] == item * b->size) return k;
    return -1;
}

/* Grows a (the destination's last axes) and b (the source's contiguous axes), the shorter one
   first, until neither can grow. Marks their axes in `used`. Where the source is contiguous
   along no axis, b is the axis with the smallest source stride (cache blocks still help). */
static void choose_runs(Plane *p, int nd, const Py_ssize_t *shape, const Py_ssize_t *ss,
                        const Py_ssize_t *ds, int last, char *used) {
    p->a.n = p->b.n = 0;
    p->a.size = p->b.size = 1;
    run_add(&p->a, last, shape[last], ss[last]);
    used[last] = 1;
    for (;;) {
        int ka = next_a(&p->a, used, shape, ds, p->item);
        int kb = next_b(&p->b, used, nd, shape, ss, p->item);
        if (ka >= 0 && (kb < 0 || p->a.size <= p->b.size)) {
            run_add(&p->a, ka, shape[ka], ss[ka]);
            used[ka] = 1;
        } else if (kb >= 0) {
            run_add(&p->b, kb, shape[kb], ds[kb]);
            used[kb] = 1;
        } else {
            break;
        }
    }
    p->sb = p->item;
    if (p->b.n == 0) {
        int k = -1;
        for (int j = 0; j < nd; j++)
            if (!used[j] && shape[j] > 1 && (k < 0 || ss[j] < ss[k])) k = j;
        if (k >= 0) {
            run_add(&p->b, k, shape[k], ds[k]);
            used[k] = 1;
            p->sb = ss[k];
        }
    }
}

/* Calls fn for every index of the axes not marked in `used`, in C order, with the source and
   destination offsets of that index. */
typedef struct {
    const char *s;
    char *d;
} Ptrs;

static void each_outer(Ptrs base, int nd, const Py_ssize_t *shape, const Py_ssize_t *ss,
                       const Py_ssize_t *ds, const char *used,
                       void (*fn)(const char *, char *, const void *), const void *arg) {
    Py_ssize_t idx[MAX_DIMS] = {0};
    Py_ssize_t so = 0, dof = 0;
    for (;;) {
        fn(base.s + so, base.d + dof, arg);
        int k = nd - 1;
        for (; k >= 0; k--) {
            if (used[k] || shape[k] == 1) continue;
            if (++idx[k] < shape[k]) {
                so += ss[k];
                dof += ds[k];
                break;
            }
            so -= ss[k] * (shape[k] - 1);
            dof -= ds[k] * (shape[k] - 1);
            idx[k] = 0;
        }
        if (k < 0) return;
    }
}

static void plane_fn(const char *s, char *d, const void *arg) { copy_plane(s, d, (const Plane *)arg); }

static void rows_fn(const char *s, char *d, const void *arg) {
    memcpy(d, s, *(const size_t *)arg);
}

/* C-order byte strides of `shape`. */
static void c_strides(int nd, const Py_ssize_t *shape, Py_ssize_t item, Py_ssize_t *ds) {
    Py_ssize_t step = item;
    for (int k = nd - 1; k >= 0; k--) {
        ds[k] = step;
        step *= shape[k];
    }
}

static void copy_view(const char *s, char *d, int nd, const Py_ssize_t *shape,
                      const Py_ssize_t *ss, const Py_ssize_t *ds, Py_ssize_t item) {
    char used[MAX_DIMS] = {0};
    int last = nd - 1;
    while (last > 0 && shape[last] == 1) last--;
    Ptrs base = {s, d};
    if (ss[last] == item || shape[last] == 1) {
        /* rows contiguous on both sides: the trailing axes the source continues, one memcpy each */
        size_t len = (size_t)item;
        for (int k = last; k >= 0 && (shape[k] == 1 ||
                                      (ss[k] == (Py_ssize_t)len && ds[k] == (Py_ssize_t)len)); k--) {
            len *= (size_t)shape[k];
            used[k] = 1;
        }
        each_outer(base, nd, shape, ss, ds, used, rows_fn, &len);
        return;
    }
    Plane p;
    p.item = item;
    choose_runs(&p, nd, shape, ss, ds, last, used);
    p.block = block_for(item, p.sb, p.b.size);
    each_outer(base, nd, shape, ss, ds, used, plane_fn, &p);
}

static int read_sizes(PyObject *seq, Py_ssize_t *out, Py_ssize_t n, const char *what) {
    for (Py_ssize_t k = 0; k < n; k++) {
        out[k] = PyLong_AsSsize_t(PyTuple_GET_ITEM(seq, k));
        if (out[k] == -1 && PyErr_Occurred()) return -1;
        if (out[k] < 0) {
            PyErr_Format(PyExc_ValueError, "negative %s", what);
            return -1;
        }
    }
    return 0;
}

/* Checks every access fits both buffers; returns the number of bytes to write, or -1. */
static Py_ssize_t check_bounds(Py_ssize_t src_len, Py_ssize_t offset, Py_ssize_t dst_len, int nd,
                               const Py_ssize_t *shape, const Py_ssize_t *ss,
                               const Py_ssize_t *ds, Py_ssize_t item) {
    Py_ssize_t count = 1, last = 0, dlast = 0;
    for (int k = 0; k < nd; k++) {
        if (shape[k] == 0) return 0;
        if (__builtin_mul_overflow(count, shape[k], &count)) goto too_big;
        Py_ssize_t reach, dreach;
        if (__builtin_mul_overflow(shape[k] - 1, ss[k], &reach) ||
            __builtin_add_overflow(last, reach, &last) ||
            __builtin_mul_overflow(shape[k] - 1, ds[k], &dreach) ||
            __builtin_add_overflow(dlast, dreach, &dlast)) goto too_big;
    }
    Py_ssize_t nbytes, end, dend;
    if (__builtin_mul_overflow(count, item, &nbytes) || __builtin_add_overflow(offset, last, &end) ||
        __builtin_add_overflow(end, item, &end) || __builtin_add_overflow(dlast, item, &dend))
        goto too_big;
    if (end > src_len || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "the view reaches outside the source buffer");
        return -1;
    }
    if (dend > dst_len) {
        PyErr_SetString(PyExc_ValueError, "the destination buffer is too small");
        return -1;
    }
    return nbytes;
too_big:
    PyErr_SetString(PyExc_ValueError, "view too large");
    return -1;
}

static PyObject *permute(PyObject *self, PyObject *args) {
    Py_buffer src, dst;
    Py_ssize_t offset, item;
    PyObject *shape_t, *strides_t, *dst_strides_t = Py_None;
    if (!PyArg_ParseTuple(args, "y*nw*O!O!n|O", &src, &offset, &dst, &PyTuple_Type, &shape_t,
                          &PyTuple_Type, &strides_t, &item, &dst_strides_t))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t shape[MAX_DIMS], ss[MAX_DIMS], ds[MAX_DIMS];
    Py_ssize_t nd = PyTuple_GET_SIZE(shape_t);
    if (nd < 1 || nd > MAX_DIMS || PyTuple_GET_SIZE(strides_t) != nd || item < 1) {
        PyErr_SetString(PyExc_ValueError, "shape and strides must have 1 to 32 entries, item >= 1");
        goto done;
    }
    if (read_sizes(shape_t, shape, nd, "extent") < 0 || read_sizes(strides_t, ss, nd, "stride") < 0)
        goto done;
    if (dst_strides_t == Py_None) {
        c_strides((int)nd, shape, item, ds);
    } else {
        if (!PyTuple_Check(dst_strides_t) || PyTuple_GET_SIZE(dst_strides_t) != nd) {
            PyErr_SetString(PyExc_ValueError, "dst_strides must be a tuple as long as shape");
            goto done;
        }
        if (read_sizes(dst_strides_t, ds, nd, "destination stride") < 0) goto done;
        /* C order with rows spaced out: items contiguous, no two elements on one place */
        Py_ssize_t span = item;
        for (Py_ssize_t k = nd - 1; k >= 0; k--) {
            if (shape[k] == 1) continue;
            if (span == item ? ds[k] != item : ds[k] < span || ds[k] > PY_SSIZE_T_MAX / shape[k]) {
                PyErr_SetString(PyExc_ValueError, "dst_strides must keep rows contiguous and "
                                                  "not overlap (C order, rows spaced out)");
                goto done;
            }
            span = ds[k] * shape[k];
        }
    }
    Py_ssize_t nbytes = check_bounds(src.len, offset, dst.len, (int)nd, shape, ss, ds, item);
    if (nbytes < 0) goto done;
    if (nbytes > 0) {
        Py_BEGIN_ALLOW_THREADS
        copy_view((const char *)src.buf + offset, (char *)dst.buf, (int)nd, shape, ss, ds, item);
        Py_END_ALLOW_THREADS
    }
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&src);
    PyBuffer_Release(&dst);
    return result;
}

static PyMethodDef methods[] = {
    {"permute", permute, METH_VARARGS,
     "permute(src, offset, dst, shape, strides, itemsize, dst_strides=None): copy a strided "
     "view of src into the C-contiguous dst (or into the view of dst with those strides)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_transpose", NULL, -1, methods};

#ifndef SOURCE_SHA256
#define SOURCE_SHA256 "" /* built without setup.py */
#endif

/* SOURCE_SHA256 (setup.py: the SHA-256 of this file) lets tests and benchmarks refuse a stale
   build. */
PyMODINIT_FUNC PyInit__transpose(void) {
    PyObject *m = PyModule_Create(&module);
    if (m && PyModule_AddStringConstant(m, "SOURCE_SHA256", SOURCE_SHA256) < 0) Py_CLEAR(m);
    return m;
}
