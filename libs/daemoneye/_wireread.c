/* Process events and alerts read from a checked envelope's bytes, compiled: the values
 * wire.tuple_reader gives through pycapnp, for the common layout only.
 *
 * The detector reads every process event (a start and a stop an exec, each with its
 * 42-field record): through pycapnp ~20 us an event warm, a field a call. Here the
 * fields are read straight from the one segment by a Shape, made by wire.py from the
 * schema (this file knows no schema): numbers and bools XORed with their defaults,
 * enums as names, texts, Data as hex, structs as dicts, lists as lists.
 *
 * Only the layout pycapnp and wirepack write is read here: one segment, near pointers,
 * texts as byte lists, List(Text) as pointer lists, List(Struct) as inline composites,
 * valid UTF-8, known enumerants. Anything else (a far pointer, another list encoding,
 * bytes pycapnp would refuse) makes read_body return None, and the caller reads the
 * message through pycapnp, which reads it or says why not. The message has passed
 * wirecheck (bounds, depth, traversal budget) first; bounds are checked again here.
 *
 * read_body(data, body_slot, events_slot, shape) -> list of values, or None: the body
 * is the struct at the root's pointer `body_slot`; events_slot < 0: it is the one value
 * (an event, an alert); else its pointer `events_slot` is the list of events. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* field kinds: wire.py's READ_KINDS names the same numbers */
enum {
    R_VOID, R_BOOL, R_I8, R_I16, R_I32, R_I64, R_U8, R_U16, R_U32, R_U64, R_F32, R_F64,
    R_ENUM, R_TEXT, R_DATA, R_STRUCT, R_TEXT_LIST, R_STRUCT_LIST, R_COUNT
};

#define MAX_DEPTH 32

typedef struct {
    int kind;
    Py_ssize_t at;   /* byte offset in the data section (bools: bit offset), or slot */
    uint64_t xor;    /* the default's bits */
    PyObject *extra; /* an enum's names by number (tuple), or a struct's Shape */
} Field;

typedef struct {
    PyObject_HEAD
    Py_ssize_t n;
    Field *fields;
    PyObject *keys; /* a dict's keys (tuple), or NULL: a tuple of the values */
} Shape;

static PyTypeObject ShapeType;

typedef struct {
    const unsigned char *seg; /* the segment's first byte */
    int64_t words;
    int unusual; /* set (no exception): pycapnp reads this message */
} Ctx;

typedef struct {
    int64_t data, dwords, ptrs, pcount; /* word indices and sizes in the segment */
} Loc;

static inline uint64_t word(const Ctx *c, int64_t i) {
    uint64_t w;
    memcpy(&w, c->seg + 8 * i, 8);
    return w; /* little-endian hosts only: wire.py uses this file on those alone */
}

static inline int64_t offset30(uint64_t w) {
    int64_t o = (int64_t)((w & 0xFFFFFFFFu) >> 2);
    return (o & 0x20000000) ? o - 0x40000000 : o;
}

static PyObject *unusual(Ctx *c) {
    c->unusual = 1;
    return NULL;
}

/* The struct the pointer in word `i` points to; a null pointer: an empty struct (every
 * field reads as its default, as pycapnp reads a default struct). 0, or -1: unusual. */
static int struct_at(Ctx *c, int64_t i, Loc *out) {
    uint64_t w = word(c, i);
    if (w == 0) {
        *out = (Loc){0, 0, 0, 0};
        return 0;
    }
    if ((w & 3) != 0) {
        c->unusual = 1;
        return -1;
    }
    int64_t start = i + 1 + offset30(w);
    int64_t dw = (int64_t)((w >> 32) & 0xFFFF), pc = (int64_t)(w >> 48);
    if (start < 0 || start + dw + pc > c->words) {
        c->unusual = 1;
        return -1;
    }
    *out = (Loc){start, dw, start + dw, pc};
    return 0;
}

/* A list pointer in word `i` whose elements have size code `size`: its first word and
 * count. 1: a null pointer; 0: found; -1: unusual. */
static int list_at(Ctx *c, int64_t i, int size, int64_t *start, int64_t *count) {
    uint64_t w = word(c, i);
    if (w == 0)
        return 1;
    if ((w & 3) != 1 || (int)((w >> 32) & 7) != size) {
        c->unusual = 1;
        return -1;
    }
    *start = i + 1 + offset30(w);
    *count = (int64_t)(w >> 35);
    int64_t words = size == 2 ? (*count + 7) / 8 : size == 6 ? *count : *count + 1;
    if (*start < 0 || *start + words > c->words) {
        c->unusual = 1;
        return -1;
    }
    return 0;
}

static PyObject *text_at(Ctx *c, int64_t i, int data) {
    int64_t start, count;
    int r = list_at(c, i, 2, &start, &count);
    if (r < 0)
        return NULL;
    if (r == 1)
        return PyUnicode_FromStringAndSize("", 0);
    const char *bytes = (const char *)c->seg + 8 * start;
    if (data) {
        static const char hex[] = "0123456789abcdef";
        PyObject *s = PyUnicode_New(2 * count, 127);
        if (s == NULL)
            return NULL;
        Py_UCS1 *out = PyUnicode_1BYTE_DATA(s);
        for (int64_t k = 0; k < count; k++) {
            unsigned char b = (unsigned char)bytes[k];
            out[2 * k] = hex[b >> 4];
            out[2 * k + 1] = hex[b & 15];
        }
        return s;
    }
    if (count < 1 || bytes[count - 1] != 0)
        return unusual(c); /* not NUL-terminated: pycapnp says so */
    PyObject *s = PyUnicode_DecodeUTF8(bytes, count - 1, "strict");
    if (s == NULL && PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
        PyErr_Clear(); /* pycapnp raises it, and the detector counts the message */
        return unusual(c);
    }
    return s;
}

static PyObject *read_struct(Ctx *c, const Loc *at, Shape *shape, int depth);

static PyObject *text_list_at(Ctx *c, int64_t i) {
    int64_t start, count;
    int r = list_at(c, i, 6, &start, &count);
    if (r < 0)
        return NULL;
    PyObject *list = PyList_New(r == 1 ? 0 : count);
    if (list == NULL || r == 1)
        return list;
    for (int64_t k = 0; k < count; k++) {
        PyObject *t = text_at(c, start + k, 0);
        if (t == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, t);
    }
    return list;
}

static PyObject *struct_list_at(Ctx *c, int64_t i, Shape *shape, int depth) {
    int64_t start, words;
    int r = list_at(c, i, 7, &start, &words);
    if (r < 0)
        return NULL;
    if (r == 1)
        return PyList_New(0);
    uint64_t tag = word(c, start);
    if ((tag & 3) != 0)
        return unusual(c);
    int64_t count = (int64_t)((tag & 0xFFFFFFFFu) >> 2);
    int64_t dw = (int64_t)((tag >> 32) & 0xFFFF), pc = (int64_t)(tag >> 48);
    if ((dw + pc) ? count > words / (dw + pc) : count > 0)
        return unusual(c); /* wirecheck refuses it first; not read past the list here */
    PyObject *list = PyList_New(count);
    if (list == NULL)
        return NULL;
    for (int64_t k = 0; k < count; k++) {
        int64_t base = start + 1 + k * (dw + pc);
        Loc at = {base, dw, base + dw, pc};
        PyObject *item = read_struct(c, &at, shape, depth + 1);
        if (item == NULL) {
            Py_DECREF(list);
            return NULL;
        }
        PyList_SET_ITEM(list, k, item);
    }
    return list;
}

static PyObject *value(Ctx *c, const Loc *at, Field *f, int depth) {
    if (f->kind >= R_TEXT) {
        if (f->at >= at->pcount) { /* beyond the pointers written: null */
            switch (f->kind) {
            case R_TEXT:
            case R_DATA:
                return PyUnicode_FromStringAndSize("", 0);
            case R_TEXT_LIST:
            case R_STRUCT_LIST:
                return PyList_New(0);
            default: {
                Loc empty = {0, 0, 0, 0};
                return read_struct(c, &empty, (Shape *)f->extra, depth + 1);
            }
            }
        }
        int64_t i = at->ptrs + f->at;
        switch (f->kind) {
        case R_TEXT:
            return text_at(c, i, 0);
        case R_DATA:
            return text_at(c, i, 1);
        case R_TEXT_LIST:
            return text_list_at(c, i);
        case R_STRUCT_LIST:
            return struct_list_at(c, i, (Shape *)f->extra, depth);
        default: {
            Loc inner;
            if (struct_at(c, i, &inner) < 0)
                return NULL;
            return read_struct(c, &inner, (Shape *)f->extra, depth + 1);
        }
        }
    }
    int64_t data_bytes = 8 * at->dwords;
    const unsigned char *data = c->seg + 8 * at->data;
    if (f->kind == R_VOID)
        Py_RETURN_NONE;
    if (f->kind == R_BOOL) {
        int bit = f->at / 8 < data_bytes ? (data[f->at / 8] >> (f->at % 8)) & 1 : 0;
        return PyBool_FromLong(bit ^ (int)f->xor);
    }
    static const int width[R_COUNT] = {[R_I8] = 1, [R_I16] = 2, [R_I32] = 4, [R_I64] = 8,
                                       [R_U8] = 1, [R_U16] = 2, [R_U32] = 4, [R_U64] = 8,
                                       [R_F32] = 4, [R_F64] = 8, [R_ENUM] = 2};
    int w = width[f->kind];
    uint64_t bits = 0;
    if (f->at + w <= data_bytes)
        for (int k = 0; k < w; k++)
            bits |= (uint64_t)data[f->at + k] << (8 * k);
    bits ^= f->xor;
    switch (f->kind) {
    case R_I8:
        return PyLong_FromLong((int8_t)bits);
    case R_I16:
        return PyLong_FromLong((int16_t)bits);
    case R_I32:
        return PyLong_FromLong((int32_t)bits);
    case R_I64:
        return PyLong_FromLongLong((int64_t)bits);
    case R_F32: {
        uint32_t b32 = (uint32_t)bits;
        float v;
        memcpy(&v, &b32, 4);
        return PyFloat_FromDouble((double)v);
    }
    case R_F64: {
        double v;
        memcpy(&v, &bits, 8);
        return PyFloat_FromDouble(v);
    }
    case R_ENUM: {
        Py_ssize_t n = PyTuple_GET_SIZE(f->extra);
        PyObject *name = (Py_ssize_t)bits < n ? PyTuple_GET_ITEM(f->extra, bits) : Py_None;
        if (name == Py_None)
            return unusual(c); /* an enumerant this schema does not name */
        return Py_NewRef(name);
    }
    default:
        return PyLong_FromUnsignedLongLong(bits);
    }
}

static PyObject *read_struct(Ctx *c, const Loc *at, Shape *shape, int depth) {
    if (depth > MAX_DEPTH)
        return unusual(c);
    PyObject *out = shape->keys ? _PyDict_NewPresized(shape->n) : PyTuple_New(shape->n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t k = 0; k < shape->n; k++) {
        PyObject *v = value(c, at, &shape->fields[k], depth);
        if (v == NULL)
            goto fail;
        if (shape->keys == NULL) {
            PyTuple_SET_ITEM(out, k, v); /* steals v */
            continue;
        }
        int r = PyDict_SetItem(out, PyTuple_GET_ITEM(shape->keys, k), v);
        Py_DECREF(v);
        if (r < 0)
            goto fail;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

/* --- Shape --------------------------------------------------------------------- */

static void shape_dealloc(Shape *self) {
    for (Py_ssize_t k = 0; k < self->n; k++)
        Py_XDECREF(self->fields[k].extra);
    PyMem_Free(self->fields);
    Py_XDECREF(self->keys);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* Shape(fields, keys): fields, one (kind, at, default bits, extra) a value; keys: the
 * dict's keys, or None for a tuple. */
static PyObject *shape_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    PyObject *fields, *keys;
    static char *names[] = {"fields", "keys", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!O", names, &PyTuple_Type, &fields, &keys))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(fields);
    if (keys != Py_None && (!PyTuple_Check(keys) || PyTuple_GET_SIZE(keys) != n)) {
        PyErr_SetString(PyExc_ValueError, "one key a field, or None");
        return NULL;
    }
    Shape *self = (Shape *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->fields = PyMem_Calloc(n ? n : 1, sizeof(Field));
    if (self->fields == NULL) {
        Py_DECREF(self);
        return PyErr_NoMemory();
    }
    self->n = n;
    self->keys = keys == Py_None ? NULL : Py_NewRef(keys);
    for (Py_ssize_t k = 0; k < n; k++) {
        Field *f = &self->fields[k];
        int kind;
        Py_ssize_t at;
        unsigned long long xor;
        PyObject *extra;
        if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, k), "inKO", &kind, &at, &xor, &extra))
            goto bad;
        if (kind < 0 || kind >= R_COUNT || at < 0 || at > (1 << 20)) {
            PyErr_Format(PyExc_ValueError, "field %zd: kind %d at %zd", k, kind, at);
            goto bad;
        }
        if ((kind == R_STRUCT || kind == R_STRUCT_LIST) && !PyObject_TypeCheck(extra, &ShapeType)) {
            PyErr_SetString(PyExc_TypeError, "a struct field needs its Shape");
            goto bad;
        }
        if ((kind == R_STRUCT || kind == R_STRUCT_LIST) && ((Shape *)extra)->keys == NULL) {
            PyErr_SetString(PyExc_ValueError, "a nested struct is read as a dict");
            goto bad;
        }
        if (kind == R_ENUM && !PyTuple_Check(extra)) {
            PyErr_SetString(PyExc_TypeError, "an enum field needs its names by number");
            goto bad;
        }
        f->kind = kind;
        f->at = at;
        f->xor = xor;
        f->extra = extra == Py_None ? NULL : Py_NewRef(extra);
    }
    return (PyObject *)self;
bad:
    Py_DECREF(self);
    return NULL;
}

static PyTypeObject ShapeType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daemoneye._wireread.Shape",
    .tp_basicsize = sizeof(Shape),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Shape(fields, keys): how one struct type is read",
    .tp_new = shape_new,
    .tp_dealloc = (destructor)shape_dealloc,
};

/* --- module -------------------------------------------------------------------- */

static PyObject *read_body(PyObject *module, PyObject *args) {
    Py_buffer data;
    Py_ssize_t body_slot, events_slot;
    PyObject *shape;
    if (!PyArg_ParseTuple(args, "y*nnO!", &data, &body_slot, &events_slot, &ShapeType, &shape))
        return NULL;
    PyObject *result = NULL;
    const unsigned char *p = data.buf;
    uint32_t count_minus_one, size;
    if (data.len < 16 || body_slot < 0)
        goto leave_to_pycapnp;
    memcpy(&count_minus_one, p, 4);
    memcpy(&size, p + 4, 4);
    if (count_minus_one != 0 || 8 + 8 * (int64_t)size != data.len)
        goto leave_to_pycapnp; /* several segments: far pointers, pycapnp's */
    Ctx c = {p + 8, size, 0};
    Loc root, body;
    if (struct_at(&c, 0, &root) < 0 || root.pcount <= body_slot)
        goto leave_to_pycapnp;
    if (struct_at(&c, root.ptrs + body_slot, &body) < 0)
        goto leave_to_pycapnp;
    if (events_slot < 0) {
        PyObject *one = read_struct(&c, &body, (Shape *)shape, 0);
        if (one != NULL) {
            result = PyList_New(1);
            if (result == NULL)
                Py_DECREF(one);
            else
                PyList_SET_ITEM(result, 0, one);
        }
    } else if (events_slot >= body.pcount) {
        result = PyList_New(0);
    } else {
        result = struct_list_at(&c, body.ptrs + events_slot, (Shape *)shape, 0);
    }
    if (result == NULL && c.unusual && !PyErr_Occurred())
        goto leave_to_pycapnp;
    goto done;
leave_to_pycapnp:
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&data);
    return result;
}

static PyMethodDef methods[] = {
    {"read_body", read_body, METH_VARARGS,
     "read_body(data, body_slot, events_slot, shape) -> list of values, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "daemoneye._wireread",
    "process events and alerts read from an envelope's bytes, compiled", -1, methods,
};

PyMODINIT_FUNC PyInit__wireread(void) {
    if (PyType_Ready(&ShapeType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Shape", (PyObject *)&ShapeType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
