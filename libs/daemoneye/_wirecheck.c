/* The structural check of wirecheck.py, compiled: the same walk, the same verdicts and
 * the same messages (tests/unit/test_wirecheck.py runs both against a plain reference).
 *
 * Every service runs it on every message it receives, and in Python it was 9-20 % of
 * a service's CPU (an alert with its ancestry: ~56 us warm). Built as an optional
 * extension: where no compiler is found, wirecheck.py's own walk runs instead.
 *
 * check_words(segments, max_words, max_depth) -> None, or the reason (str) the message
 * is refused. `segments`: a sequence of buffers (bytes, or memoryviews cast to 'Q') in
 * the machine's byte order, whose whole 8-byte words are the segment's words;
 * wirecheck.py calls it only on little-endian machines, as the wire is. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    const uint64_t *words;
    int64_t size;
} Segment;

typedef struct {
    int64_t seg, first, count, depth;
} Run;

typedef struct {
    Run *runs;
    size_t used, cap;
} Stack;

static const int ELEMENT_BITS[8] = {0, 1, 8, 16, 32, 64, 64, 0};

static int push(Stack *s, int64_t seg, int64_t first, int64_t count, int64_t depth) {
    if (s->used == s->cap) {
        size_t cap = s->cap ? s->cap * 2 : 64;
        Run *runs = PyMem_Realloc(s->runs, cap * sizeof(Run));
        if (runs == NULL)
            return -1;
        s->runs = runs;
        s->cap = cap;
    }
    s->runs[s->used++] = (Run){seg, first, count, depth};
    return 0;
}

static inline uint64_t word_at(const Segment *s, int64_t i) {
    uint64_t w;
    memcpy(&w, (const char *)s->words + 8 * i, 8); /* buffers need not be 8-aligned */
    return w;
}

static inline int64_t signed30(uint64_t value) {
    int64_t offset = (int64_t)((value & 0xFFFFFFFFu) >> 2);
    return (offset & 0x20000000) ? offset - 0x40000000 : offset;
}

/* Follow a far pointer: sets *seg, *at and *value (the struct/list pointer to apply). */
static const char *land(const Segment *segs, int64_t nseg, uint64_t value, int64_t *seg,
                        int64_t *at, uint64_t *out) {
    int64_t dbl = (value >> 2) & 1;
    int64_t pad = (value >> 3) & 0x1FFFFFFF;
    uint64_t target = value >> 32;
    if (target >= (uint64_t)nseg)
        return "far pointer to an unknown segment";
    if (pad + 1 + dbl > segs[target].size)
        return "far pointer landing pad out of bounds";
    uint64_t landing = word_at(&segs[target], pad);
    if (!dbl) {
        if ((landing & 3) > 1)
            return "far pointer lands on another far or capability pointer";
        *seg = (int64_t)target;
        if (landing == 0) {
            *at = pad + 1;
            *out = 0;
            return NULL;
        }
        *at = pad + 1 + signed30(landing);
        *out = landing;
        return NULL;
    }
    uint64_t tag = word_at(&segs[target], pad + 1);
    if ((landing & 7) != 2)
        return "double-far landing pad is not a far pointer";
    if ((tag & 3) > 1 || (tag & 0xFFFFFFFCu))
        return "double-far tag is malformed";
    uint64_t content = landing >> 32;
    if (content >= (uint64_t)nseg)
        return "far pointer to an unknown segment";
    *seg = (int64_t)content;
    *at = (landing >> 3) & 0x1FFFFFFF;
    *out = tag;
    return NULL;
}

/* One non-null pointer at word `pos` of segment `seg` (wirecheck._pointer). */
static const char *pointer(const Segment *segs, int64_t nseg, int64_t seg, int64_t pos,
                           uint64_t value, int64_t depth, int64_t max_depth, int64_t *budget,
                           Stack *stack, int *nomem) {
    if (depth >= max_depth)
        return "nesting limit exceeded";
    uint64_t kind = value & 3;
    int64_t at;
    if (kind < 2) {
        at = pos + 1 + signed30(value);
    } else if (kind == 2) {
        const char *why = land(segs, nseg, value, &seg, &at, &value);
        if (why != NULL)
            return why;
        if (value == 0) {
            *budget -= 1; /* a null landing pad: nothing to check */
            return NULL;
        }
    } else {
        return "capability pointers are not allowed";
    }
    if (at < 0)
        return "pointer before the start of its segment";
    const Segment *s = &segs[seg];
    if ((value & 3) == 0) { /* struct */
        int64_t data_words = (value >> 32) & 0xFFFF;
        int64_t pointers = (int64_t)(value >> 48);
        if (at + data_words + pointers > s->size)
            return "out-of-bounds struct pointer";
        if (pointers && push(stack, seg, at + data_words, pointers, depth + 1) < 0) {
            *nomem = 1;
            return "out of memory";
        }
        *budget -= (data_words + pointers) ? (data_words + pointers) : 1;
        return NULL;
    }
    int element = (int)((value >> 32) & 7);
    int64_t count = (int64_t)(value >> 35);
    if (element == 7) {
        if (at + 1 + count > s->size)
            return "out-of-bounds list pointer";
        uint64_t tag = word_at(s, at);
        if (tag & 3)
            return "composite list tag is not a struct tag";
        int64_t elements = (int64_t)((tag & 0xFFFFFFFFu) >> 2);
        int64_t data_words = (tag >> 32) & 0xFFFF;
        int64_t pointers = (int64_t)(tag >> 48);
        int64_t stride = data_words + pointers;
        if (elements * stride > count)
            return "composite list larger than its words";
        int64_t spent = stride ? count : elements;
        *budget -= spent ? spent : 1;
        if (*budget < 0) /* before pushing a run per element of a huge list of empty structs */
            return "traversal limit exceeded";
        if (pointers) {
            int64_t base = at + 1 + data_words;
            for (int64_t e = 0; e < elements; e++) {
                if (push(stack, seg, base + e * stride, pointers, depth + 1) < 0) {
                    *nomem = 1;
                    return "out of memory";
                }
            }
        }
        return NULL;
    }
    if (element == 6) {
        if (at + count > s->size)
            return "out-of-bounds list pointer";
        if (count && push(stack, seg, at, count, depth + 1) < 0) {
            *nomem = 1;
            return "out of memory";
        }
        *budget -= count ? count : 1;
        return NULL;
    }
    int64_t span = (count * ELEMENT_BITS[element] + 63) >> 6;
    if (at + span > s->size)
        return "out-of-bounds list pointer";
    int64_t spent = element ? span : count; /* void lists cost a word each */
    *budget -= spent ? spent : 1;
    return NULL;
}

static const char *walk(const Segment *segs, int64_t nseg, int64_t budget, int64_t max_depth,
                        Stack *stack, int *nomem) {
    if (nseg < 1 || segs[0].size < 1)
        return "the first segment has no room for the root pointer";
    if (push(stack, 0, 0, 1, 0) < 0) {
        *nomem = 1;
        return "out of memory";
    }
    while (stack->used) {
        Run run = stack->runs[--stack->used];
        const Segment *s = &segs[run.seg];
        int64_t end = run.first + run.count;
        if (end > s->size) /* as a slice would: never happens for runs the walk pushes */
            end = s->size;
        for (int64_t i = run.first; i < end; i++) {
            uint64_t value = word_at(s, i);
            if (value) {
                const char *why = pointer(segs, nseg, run.seg, i, value, run.depth, max_depth,
                                          &budget, stack, nomem);
                if (why != NULL)
                    return why;
            }
        }
        if (budget < 0)
            return "traversal limit exceeded";
    }
    return NULL;
}

static PyObject *check_words(PyObject *module, PyObject *args) {
    PyObject *segments;
    long long max_words, max_depth;
    if (!PyArg_ParseTuple(args, "OLL", &segments, &max_words, &max_depth))
        return NULL;
    PyObject *seq = PySequence_Fast(segments, "segments must be a sequence of buffers");
    if (seq == NULL)
        return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(seq);
    Py_buffer *views = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Py_buffer));
    Segment *segs = PyMem_Calloc(n ? (size_t)n : 1, sizeof(Segment));
    PyObject *result = NULL;
    Py_ssize_t held = 0;
    if (views == NULL || segs == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (; held < n; held++) {
        PyObject *item = PySequence_Fast_GET_ITEM(seq, held);
        if (PyObject_GetBuffer(item, &views[held], PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0)
            goto done;
        segs[held].words = views[held].buf;
        segs[held].size = views[held].len / 8;
    }
    Stack stack = {NULL, 0, 0};
    int nomem = 0;
    const char *why = walk(segs, n, max_words, max_depth, &stack, &nomem);
    PyMem_Free(stack.runs);
    if (nomem)
        PyErr_NoMemory();
    else if (why == NULL)
        result = Py_NewRef(Py_None);
    else
        result = PyUnicode_FromString(why);
done:
    for (Py_ssize_t i = 0; i < held; i++)
        PyBuffer_Release(&views[i]);
    PyMem_Free(views);
    PyMem_Free(segs);
    Py_DECREF(seq);
    return result;
}

static PyMethodDef methods[] = {
    {"check_words", check_words, METH_VARARGS,
     "check_words(segments, max_words, max_depth) -> None, or why the message is refused"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "daemoneye._wirecheck",
    "wirecheck's structural check of a Cap'n Proto message, compiled", -1, methods,
};

PyMODINIT_FUNC PyInit__wirecheck(void) { return PyModule_Create(&module); }
