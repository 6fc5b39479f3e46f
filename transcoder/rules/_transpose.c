/* Cache-blocked strided copy: the kernel behind transcoder.rules.transpose.

   permute(src, offset, dst, shape, strides, itemsize)

   Copies the strided view described by (offset, shape, strides) of the buffer `src` into the
   C-contiguous buffer `dst`:  dst[i0, ..., iN] = src[offset + sum(ik * strides[k])].
   All sizes are in bytes except `shape`. Every address the copy touches is checked against
   both buffers before the GIL is released, so a wrong call raises ValueError instead of
   reading or writing out of bounds.

   The innermost work is a 2-D tile copy between the destination's last axis and the axis the
   source is contiguous along. On x86-64 with AVX2, 4-byte elements move in 8x8 register
   transposes and 2-byte elements in SSE2 8x8 transposes; everything else (and every other
   machine) uses a plain blocked loop. Optional: without a compiler the package falls back to
   numpy (transcoder/rules/transpose.py). */
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

typedef struct {
    Py_ssize_t nb, na;        /* extents: b = axis the source is contiguous along, a = dst's last */
    Py_ssize_t sb, sa, db;    /* byte strides: source along b and a, destination along b */
    Py_ssize_t item;          /* element size; the destination stride along a */
} Plane;

/* Plain blocked copy of one plane, any element size. */
#define SCALAR_PLANE(NAME, T)                                                               \
    static void NAME(const char *s, char *d, const Plane *p) {                             \
        for (Py_ssize_t b0 = 0; b0 < p->nb; b0 += BLOCK) {                                  \
            Py_ssize_t b1 = b0 + BLOCK < p->nb ? b0 + BLOCK : p->nb;                        \
            for (Py_ssize_t a0 = 0; a0 < p->na; a0 += BLOCK) {                              \
                Py_ssize_t a1 = a0 + BLOCK < p->na ? a0 + BLOCK : p->na;                    \
                for (Py_ssize_t b = b0; b < b1; b++) {                                      \
                    const char *sr = s + b * p->sb;                                         \
                    T *dr = (T *)(d + b * p->db);                                           \
                    for (Py_ssize_t a = a0; a < a1; a++) {                                  \
                        T v;                                                                \
                        memcpy(&v, sr + a * p->sa, sizeof(T));                              \
                        memcpy(dr + a, &v, sizeof(T));                                      \
                    }                                                                       \
                }                                                                           \
            }                                                                               \
        }                                                                                   \
    }

SCALAR_PLANE(plane_1, uint8_t)
SCALAR_PLANE(plane_2, uint16_t)
SCALAR_PLANE(plane_4, uint32_t)
SCALAR_PLANE(plane_8, uint64_t)

/* Rows contiguous on both sides: one memcpy per row. */
static void plane_rows(const char *s, char *d, const Plane *p) {
    for (Py_ssize_t b = 0; b < p->nb; b++)
        memcpy(d + b * p->db, s + b * p->sb, (size_t)(p->na * p->item));
}

static void plane_any(const char *s, char *d, const Plane *p) {
    for (Py_ssize_t b = 0; b < p->nb; b++)
        for (Py_ssize_t a = 0; a < p->na; a++)
            memcpy(d + b * p->db + a * p->item, s + b * p->sb + a * p->sa, (size_t)p->item);
}

/* Copies the part of the plane the vector kernels left: b in [b_done, nb) or a in [a_done, na). */
static void plane_rest(const char *s, char *d, const Plane *p, Py_ssize_t b_done, Py_ssize_t a_done,
                       void (*scalar)(const char *, char *, const Plane *)) {
    Plane rest = *p;
    if (b_done < p->nb) {
        rest.nb = p->nb - b_done;
        scalar(s + b_done * p->sb, d + b_done * p->db, &rest);
    }
    if (a_done < p->na && b_done > 0) {
        rest.nb = b_done;
        rest.na = p->na - a_done;
        scalar(s + a_done * p->sa, d + a_done * p->item, &rest);
    }
}

#ifdef HAVE_X86
/* 8 source rows (along a) of 8 floats (along b) -> 8 destination rows (along b) of 8 floats. */
__attribute__((target("avx2"))) static inline void
t8x8_f32(const char *s, Py_ssize_t sa, char *d, Py_ssize_t db) {
    __m256 r0 = _mm256_loadu_ps((const float *)(s + 0 * sa));
    __m256 r1 = _mm256_loadu_ps((const float *)(s + 1 * sa));
    __m256 r2 = _mm256_loadu_ps((const float *)(s + 2 * sa));
    __m256 r3 = _mm256_loadu_ps((const float *)(s + 3 * sa));
    __m256 r4 = _mm256_loadu_ps((const float *)(s + 4 * sa));
    __m256 r5 = _mm256_loadu_ps((const float *)(s + 5 * sa));
    __m256 r6 = _mm256_loadu_ps((const float *)(s + 6 * sa));
    __m256 r7 = _mm256_loadu_ps((const float *)(s + 7 * sa));
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
    _mm256_storeu_ps((float *)(d + 0 * db), _mm256_permute2f128_ps(u0, u4, 0x20));
    _mm256_storeu_ps((float *)(d + 1 * db), _mm256_permute2f128_ps(u1, u5, 0x20));
    _mm256_storeu_ps((float *)(d + 2 * db), _mm256_permute2f128_ps(u2, u6, 0x20));
    _mm256_storeu_ps((float *)(d + 3 * db), _mm256_permute2f128_ps(u3, u7, 0x20));
    _mm256_storeu_ps((float *)(d + 4 * db), _mm256_permute2f128_ps(u0, u4, 0x31));
    _mm256_storeu_ps((float *)(d + 5 * db), _mm256_permute2f128_ps(u1, u5, 0x31));
    _mm256_storeu_ps((float *)(d + 6 * db), _mm256_permute2f128_ps(u2, u6, 0x31));
    _mm256_storeu_ps((float *)(d + 7 * db), _mm256_permute2f128_ps(u3, u7, 0x31));
}

/* The same for 2-byte elements, in 128-bit registers. */
static inline void t8x8_u16(const char *s, Py_ssize_t sa, char *d, Py_ssize_t db) {
    __m128i r0 = _mm_loadu_si128((const __m128i *)(s + 0 * sa));
    __m128i r1 = _mm_loadu_si128((const __m128i *)(s + 1 * sa));
    __m128i r2 = _mm_loadu_si128((const __m128i *)(s + 2 * sa));
    __m128i r3 = _mm_loadu_si128((const __m128i *)(s + 3 * sa));
    __m128i r4 = _mm_loadu_si128((const __m128i *)(s + 4 * sa));
    __m128i r5 = _mm_loadu_si128((const __m128i *)(s + 5 * sa));
    __m128i r6 = _mm_loadu_si128((const __m128i *)(s + 6 * sa));
    __m128i r7 = _mm_loadu_si128((const __m128i *)(s + 7 * sa));
    __m128i a0 = _mm_unpacklo_epi16(r0, r1), a1 = _mm_unpackhi_epi16(r0, r1);
    __m128i a2 = _mm_unpacklo_epi16(r2, r3), a3 = _mm_unpackhi_epi16(r2, r3);
    __m128i a4 = _mm_unpacklo_epi16(r4, r5), a5 = _mm_unpackhi_epi16(r4, r5);
    __m128i a6 = _mm_unpacklo_epi16(r6, r7), a7 = _mm_unpackhi_epi16(r6, r7);
    __m128i b0 = _mm_unpacklo_epi32(a0, a2), b1 = _mm_unpackhi_epi32(a0, a2);
    __m128i b2 = _mm_unpacklo_epi32(a1, a3), b3 = _mm_unpackhi_epi32(a1, a3);
    __m128i b4 = _mm_unpacklo_epi32(a4, a6), b5 = _mm_unpackhi_epi32(a4, a6);
    __m128i b6 = _mm_unpacklo_epi32(a5, a7), b7 = _mm_unpackhi_epi32(a5, a7);
    _mm_storeu_si128((__m128i *)(d + 0 * db), _mm_unpacklo_epi64(b0, b4));
    _mm_storeu_si128((__m128i *)(d + 1 * db), _mm_unpackhi_epi64(b0, b4));
    _mm_storeu_si128((__m128i *)(d + 2 * db), _mm_unpacklo_epi64(b1, b5));
    _mm_storeu_si128((__m128i *)(d + 3 * db), _mm_unpackhi_epi64(b1, b5));
    _mm_storeu_si128((__m128i *)(d + 4 * db), _mm_unpacklo_epi64(b2, b6));
    _mm_storeu_si128((__m128i *)(d + 5 * db), _mm_unpackhi_epi64(b2, b6));
    _mm_storeu_si128((__m128i *)(d + 6 * db), _mm_unpacklo_epi64(b3, b7));
    _mm_storeu_si128((__m128i *)(d + 7 * db), _mm_unpackhi_epi64(b3, b7));
}

typedef void (*Tile8)(const char *, Py_ssize_t, char *, Py_ssize_t);

/* Whole 8x8 tiles in cache blocks; the scalar copy takes the edges. */
#define VECTOR_PLANE(NAME, TILE, SCALAR, ATTR)                                             \
    ATTR static void NAME(const char *s, char *d, const Plane *p) {                       \
        Py_ssize_t nb8 = p->nb & ~(Py_ssize_t)7, na8 = p->na & ~(Py_ssize_t)7;             \
        for (Py_ssize_t b0 = 0; b0 < nb8; b0 += BLOCK) {                                  \
            Py_ssize_t b1 = b0 + BLOCK < nb8 ? b0 + BLOCK : nb8;                          \
            for (Py_ssize_t a0 = 0; a0 < na8; a0 += BLOCK) {                              \
                Py_ssize_t a1 = a0 + BLOCK < na8 ? a0 + BLOCK : na8;                      \
                for (Py_ssize_t b = b0; b < b1; b += 8)                                   \
                    for (Py_ssize_t a = a0; a < a1; a += 8)                               \
                        TILE(s + a * p->sa + b * p->sb, p->sa, d + b * p->db + a * p->item, \
                             p->db);                                                      \
            }                                                                             \
        }                                                                                 \
        plane_rest(s, d, p, nb8, na8, SCALAR);                                            \
    }

VECTOR_PLANE(plane_f32_avx2, t8x8_f32, plane_4, __attribute__((target("avx2"))))
VECTOR_PLANE(plane_u16_sse2, t8x8_u16, plane_2, )
#endif

typedef void (*PlaneFn)(const char *, char *, const Plane *);

static PlaneFn plane_for(const Plane *p) {
    int packed = p->sb == p->item; /* the source is contiguous along b */
    if (p->sa == p->item) return plane_rows;
#ifdef HAVE_X86
    if (packed && p->item == 4 && __builtin_cpu_supports("avx2")) return plane_f32_avx2;
    if (packed && p->item == 2) return plane_u16_sse2;
#endif
    (void)packed;
    switch (p->item) {
    case 1: return plane_1;
    case 2: return plane_2;
    case 4: return plane_4;
    case 8: return plane_8;
    default: return plane_any;
    }
}

/* Every index of the axes other than a and b, in C order, with its source and destination offsets. */
static void copy_planes(const char *s, char *d, int nd, const Py_ssize_t *shape,
                        const Py_ssize_t *ss, const Py_ssize_t *ds, int a, int b) {
    Plane p = {b >= 0 ? shape[b] : 1, shape[a], b >= 0 ? ss[b] : 0, ss[a], b >= 0 ? ds[b] : 0, ds[a]};
    PlaneFn fn = plane_for(&p);
    Py_ssize_t idx[MAX_DIMS] = {0};
    Py_ssize_t so = 0, dof = 0;
    for (;;) {
        fn(s + so, d + dof, &p);
        int k = nd - 1;
        for (; k >= 0; k--) {
            if (k == a || k == b) continue;
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

static void copy_view(const char *s, char *d, int nd, const Py_ssize_t *shape,
                      const Py_ssize_t *ss, Py_ssize_t item) {
    Py_ssize_t ds[MAX_DIMS];
    Py_ssize_t step = item;
    for (int k = nd - 1; k >= 0; k--) {
        ds[k] = step;
        step *= shape[k];
    }
    int a = nd - 1, b = -1;
    for (int k = 0; k < nd - 1; k++)  /* b: the smallest source stride, other than a's */
        if (shape[k] > 1 && (b < 0 || ss[k] < ss[b])) b = k;
    copy_planes(s, d, nd, shape, ss, ds, a, b);
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
                               const Py_ssize_t *shape, const Py_ssize_t *ss, Py_ssize_t item) {
    Py_ssize_t count = 1, last = 0;
    for (int k = 0; k < nd; k++) {
        if (shape[k] == 0) return 0;
        if (__builtin_mul_overflow(count, shape[k], &count)) goto too_big;
        Py_ssize_t reach;
        if (__builtin_mul_overflow(shape[k] - 1, ss[k], &reach) ||
            __builtin_add_overflow(last, reach, &last)) goto too_big;
    }
    Py_ssize_t nbytes, end;
    if (__builtin_mul_overflow(count, item, &nbytes) || __builtin_add_overflow(offset, last, &end) ||
        __builtin_add_overflow(end, item, &end)) goto too_big;
    if (end > src_len || offset < 0) {
        PyErr_SetString(PyExc_ValueError, "the view reaches outside the source buffer");
        return -1;
    }
    if (nbytes > dst_len) {
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
    PyObject *shape_t, *strides_t;
    if (!PyArg_ParseTuple(args, "y*nw*O!O!n", &src, &offset, &dst, &PyTuple_Type, &shape_t,
                          &PyTuple_Type, &strides_t, &item))
        return NULL;
    PyObject *result = NULL;
    Py_ssize_t shape[MAX_DIMS], ss[MAX_DIMS];
    Py_ssize_t nd = PyTuple_GET_SIZE(shape_t);
    if (nd < 1 || nd > MAX_DIMS || PyTuple_GET_SIZE(strides_t) != nd || item < 1) {
        PyErr_SetString(PyExc_ValueError, "shape and strides must have 1 to 32 entries, item >= 1");
        goto done;
    }
    if (read_sizes(shape_t, shape, nd, "extent") < 0 || read_sizes(strides_t, ss, nd, "stride") < 0)
        goto done;
    Py_ssize_t nbytes = check_bounds(src.len, offset, dst.len, (int)nd, shape, ss, item);
    if (nbytes < 0) goto done;
    if (nbytes > 0) {
        Py_BEGIN_ALLOW_THREADS
        copy_view((const char *)src.buf + offset, (char *)dst.buf, (int)nd, shape, ss, item);
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
     "permute(src, offset, dst, shape, strides, itemsize): copy a strided view of src into "
     "the C-contiguous dst."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_transpose", NULL, -1, methods};

PyMODINIT_FUNC PyInit__transpose(void) { return PyModule_Create(&module); }
