/* wirepack.py's writer, compiled: the same Cap'n Proto bytes from the same dicts.
 *
 * The collector encodes every event it publishes (a start and a stop an exec, each
 * with its 42-field record): wirepack's straight-line Python took ~24 us an event
 * warm, a quarter of the collector's main process at 200 exec/s. Built as an optional
 * extension: where no compiler is found, wirepack.py writes the bytes itself.
 *
 * A Layout is one struct type (its data words and pointers) and its plans, one per
 * key order of the dicts it is filled from (the order decides where pycapnp puts each
 * text, list and nested struct, so the plan does too). A plan is made by wirepack.py
 * (Layout.add) from the schema; this file knows no schema. Whatever it does not take
 * (a type, a value or a key order wirepack.py would not take, or a str subclass) raises
 * Unpackable, and wirepack.py writes the message instead, or pycapnp, which names what
 * is wrong. tests/unit/test_wirepack_native.py holds the two writers to the same bytes.
 *
 * finish(prefix, source_at, source, boot_at, boot, slot, layout, body) -> bytes:
 * `prefix`: the segment table, root pointer and root struct, with the header's numbers
 * set; the two header texts are appended and pointed to from byte source_at / boot_at,
 * then the body struct from byte `slot`, then the segment size is written. */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

/* field kinds: wirepack.py's NATIVE_KINDS names the same numbers */
enum {
    K_VOID, K_BOOL, K_I8, K_I16, K_I32, K_I64, K_U8, K_U16, K_U32, K_U64, K_F32, K_F64,
    K_ENUM, K_TEXT, K_STRUCT, K_TEXT_LIST, K_STRUCT_LIST, K_COUNT
};

#define MAX_DEPTH 64      /* nested structs followed; deeper: Unpackable */
#define MAX_COUNT (1 << 29) /* a list's element (or word) count has 29 bits */

static PyObject *Unpackable; /* wirepack.Unpackable, given by configure() */

typedef struct {
    int kind;
    Py_ssize_t at;   /* byte offset in the data section (bools: bit offset), or slot */
    PyObject *xor;   /* the default as XOR bits, NULL when 0 */
    PyObject *extra; /* an enum's name -> number dict, or a struct's Layout */
    int bit;         /* a bool's default */
} Field;

typedef struct {
    Py_ssize_t n;
    PyObject **keys; /* owned */
    Field *fields;   /* NULL: a key order refused (wirepack.py would not take it) */
} Plan;

typedef struct {
    PyObject_HEAD
    Py_ssize_t data_words, pointers;
    PyObject *need; /* need(values): adds the plan of the values' key order, or raises */
    Plan **plans;
    Py_ssize_t nplans, cap;
} Layout;

static PyTypeObject LayoutType;

typedef struct {
    char *p;
    Py_ssize_t len, cap;
} Buf;

static int reserve(Buf *b, Py_ssize_t more) {
    if (more > PY_SSIZE_T_MAX / 2 - b->len) {
        PyErr_NoMemory();
        return -1;
    }
    Py_ssize_t want = b->len + more;
    if (want <= b->cap)
        return 0;
    Py_ssize_t cap = b->cap ? b->cap : 1024;
    while (cap < want)
        cap *= 2;
    char *p = PyMem_Realloc(b->p, cap);
    if (p == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    b->p = p;
    b->cap = cap;
    return 0;
}

static int append_zeros(Buf *b, Py_ssize_t n) {
    if (reserve(b, n) < 0)
        return -1;
    memset(b->p + b->len, 0, n);
    b->len += n;
    return 0;
}

static inline void put_le(Buf *b, Py_ssize_t at, uint64_t v, int bytes) {
    for (int i = 0; i < bytes; i++)
        b->p[at + i] = (char)(v >> (8 * i));
}

static int unpackable(const char *why) {
    PyErr_SetString(Unpackable, why);
    return -1;
}

/* A pointer from the word before byte `q` to byte `w` (after it), with its other bits. */
static int pointer(Buf *b, Py_ssize_t q, Py_ssize_t w, uint64_t bits) {
    if (w - q >= ((Py_ssize_t)1 << 32))
        return unpackable("offset beyond 30 bits");
    put_le(b, q - 8, (uint64_t)((w - q) >> 1) | bits, 8);
    return 0;
}

/* wirepack's _text_code: the bytes, then a NUL and padding to a word. */
static int append_text(Buf *b, Py_ssize_t q, PyObject *value) {
    if (!PyUnicode_CheckExact(value))
        return unpackable("not a str");
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(value, &n);
    if (s == NULL)
        return -1;
    if (n + 1 >= MAX_COUNT)
        return unpackable("text too long");
    Py_ssize_t w = b->len;
    if (reserve(b, n + 8) < 0)
        return -1;
    memcpy(b->p + w, s, n);
    memset(b->p + w + n, 0, 8 - (n & 7));
    b->len = w + n + 8 - (n & 7);
    return pointer(b, q, w, ((uint64_t)2 << 32) | 1 | ((uint64_t)(n + 1) << 35));
}

static int fill(Buf *b, Py_ssize_t at, Layout *layout, PyObject *values, int depth);

static Plan *find_plan(Layout *layout, PyObject *values) {
    Py_ssize_t n = PyDict_GET_SIZE(values);
    for (Py_ssize_t p = 0; p < layout->nplans; p++) {
        Plan *plan = layout->plans[p];
        if (plan->n != n)
            continue;
        Py_ssize_t pos = 0, i = 0;
        PyObject *key, *value;
        int same = 1;
        while (PyDict_Next(values, &pos, &key, &value)) {
            PyObject *want = plan->keys[i++];
            if (key == want)
                continue;
            if (!PyUnicode_CheckExact(key) || !PyUnicode_CheckExact(want) ||
                PyUnicode_Compare(key, want) != 0) {
                same = 0;
                break;
            }
        }
        if (same)
            return plan;
    }
    return NULL;
}

static int integer(Buf *b, Py_ssize_t at, Field *f, PyObject *value) {
    if (PyBool_Check(value))
        return unpackable("a bool for a number");
    PyObject *number = f->xor ? PyNumber_Xor(value, f->xor) : PyNumber_Index(value);
    if (number == NULL)
        return -1;
    int ok = -1;
    if (!PyLong_Check(number)) {
        unpackable("not an integer");
        goto done;
    }
    static const int width[] = {[K_I8] = 1, [K_I16] = 2, [K_I32] = 4, [K_I64] = 8,
                                [K_U8] = 1, [K_U16] = 2, [K_U32] = 4, [K_U64] = 8};
    int bytes = width[f->kind];
    uint64_t bits;
    if (f->kind <= K_I64) {
        int overflow;
        long long v = PyLong_AsLongLongAndOverflow(number, &overflow);
        if (v == -1 && PyErr_Occurred())
            goto done;
        long long lo = bytes == 8 ? INT64_MIN : -(1LL << (8 * bytes - 1));
        long long hi = bytes == 8 ? INT64_MAX : (1LL << (8 * bytes - 1)) - 1;
        if (overflow || v < lo || v > hi) {
            unpackable("out of range");
            goto done;
        }
        bits = (uint64_t)v;
    } else {
        if (_PyLong_Sign(number) < 0) {
            unpackable("out of range");
            goto done;
        }
        unsigned long long v = PyLong_AsUnsignedLongLong(number);
        if (v == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear();
            unpackable("out of range");
            goto done;
        }
        if (bytes < 8 && v >> (8 * bytes)) {
            unpackable("out of range");
            goto done;
        }
        bits = v;
    }
    put_le(b, at + f->at, bits, bytes);
    ok = 0;
done:
    Py_DECREF(number);
    return ok;
}

static int enumerant(Buf *b, Py_ssize_t at, Field *f, PyObject *value) {
    PyObject *number = PyDict_GetItemWithError(f->extra, value); /* borrowed */
    if (number == NULL)
        return PyErr_Occurred() ? -1 : unpackable("no such enumerant");
    PyObject *x = f->xor ? PyNumber_Xor(number, f->xor) : Py_NewRef(number);
    if (x == NULL)
        return -1;
    long v = PyLong_AsLong(x);
    Py_DECREF(x);
    if (v == -1 && PyErr_Occurred())
        return -1;
    if (v < 0 || v > 0xFFFF)
        return unpackable("out of range");
    put_le(b, at + f->at, (uint64_t)v, 2);
    return 0;
}

static int real(Buf *b, Py_ssize_t at, Field *f, PyObject *value) {
    if (PyBool_Check(value))
        return unpackable("a bool for a number");
    double d = PyFloat_AsDouble(value);
    if (d == -1.0 && PyErr_Occurred())
        return -1;
    unsigned char raw[8];
    if (f->kind == K_F32) {
        if (PyFloat_Pack4(d, (char *)raw, 1) < 0)
            return -1;
        memcpy(b->p + at + f->at, raw, 4);
    } else {
        if (PyFloat_Pack8(d, (char *)raw, 1) < 0)
            return -1;
        memcpy(b->p + at + f->at, raw, 8);
    }
    return 0;
}

static int sequence(PyObject *value, Py_ssize_t *m, PyObject ***items) {
    if (PyList_CheckExact(value)) {
        *m = PyList_GET_SIZE(value);
        *items = ((PyListObject *)value)->ob_item;
    } else if (PyTuple_CheckExact(value)) {
        *m = PyTuple_GET_SIZE(value);
        *items = ((PyTupleObject *)value)->ob_item;
    } else {
        return unpackable("not a list");
    }
    return 0;
}

static int text_list(Buf *b, Py_ssize_t q, PyObject *value) {
    Py_ssize_t m;
    PyObject **items;
    if (sequence(value, &m, &items) < 0)
        return -1;
    if (m >= MAX_COUNT)
        return unpackable("list too long");
    Py_INCREF(value); /* its items are read while the buffer grows */
    int ok = -1;
    Py_ssize_t lw = b->len;
    if (append_zeros(b, 8 * m) < 0 || pointer(b, q, lw, ((uint64_t)6 << 32) | 1 | ((uint64_t)m << 35)) < 0)
        goto done;
    for (Py_ssize_t i = 0; i < m; i++)
        if (append_text(b, lw + 8 + 8 * i, items[i]) < 0)
            goto done;
    ok = 0;
done:
    Py_DECREF(value);
    return ok;
}

static int struct_list(Buf *b, Py_ssize_t q, Layout *sub, PyObject *value, int depth) {
    Py_ssize_t m;
    PyObject **items;
    if (sequence(value, &m, &items) < 0)
        return -1;
    Py_ssize_t words = sub->data_words + sub->pointers;
    if (m >= MAX_COUNT || (words && m >= MAX_COUNT / words))
        return unpackable("list too long");
    Py_INCREF(value);
    int ok = -1;
    Py_ssize_t lw = b->len;
    uint64_t tag = ((uint64_t)sub->data_words << 32) | ((uint64_t)sub->pointers << 48);
    if (append_zeros(b, 8 + 8 * words * m) < 0 ||
        pointer(b, q, lw, ((uint64_t)7 << 32) | 1 | ((uint64_t)(words * m) << 35)) < 0)
        goto done;
    put_le(b, lw, ((uint64_t)m << 2) | tag, 8);
    for (Py_ssize_t i = 0; i < m; i++) {
        /* read again each time: filling calls wirepack.py for a new key order */
        Py_ssize_t now;
        if (sequence(value, &now, &items) < 0)
            goto done;
        if (now != m) {
            unpackable("the list changed");
            goto done;
        }
        PyObject *item = items[i];
        if (!PyDict_CheckExact(item)) {
            unpackable("not a dict");
            goto done;
        }
        Py_INCREF(item);
        int r = fill(b, lw + 8 + 8 * words * i, sub, item, depth + 1);
        Py_DECREF(item);
        if (r < 0)
            goto done;
    }
    ok = 0;
done:
    Py_DECREF(value);
    return ok;
}

static int nested(Buf *b, Py_ssize_t q, Layout *sub, PyObject *value, int depth) {
    if (!PyDict_CheckExact(value))
        return unpackable("not a dict");
    Py_ssize_t w = b->len;
    if (append_zeros(b, 8 * (sub->data_words + sub->pointers)) < 0)
        return -1;
    uint64_t bits = ((uint64_t)sub->data_words << 32) | ((uint64_t)sub->pointers << 48);
    if (pointer(b, q, w, bits) < 0)
        return -1;
    return fill(b, w, sub, value, depth + 1);
}

/* Fill the struct at byte `at` (allocated, zeroed) from `values`, an exact dict. */
static int fill(Buf *b, Py_ssize_t at, Layout *layout, PyObject *values, int depth) {
    if (depth > MAX_DEPTH)
        return unpackable("nested too deep");
    Plan *plan = find_plan(layout, values);
    if (plan == NULL) {
        PyObject *r = PyObject_CallOneArg(layout->need, values);
        if (r == NULL)
            return -1;
        Py_DECREF(r);
        plan = find_plan(layout, values);
        if (plan == NULL)
            return unpackable("no plan for this key order");
    }
    if (plan->fields == NULL)
        return unpackable("a key order refused");
    Py_INCREF(values); /* its values are borrowed while we fill */
    int ok = -1;
    Py_ssize_t pos = 0, i = 0;
    Py_ssize_t ps = at + 8 * layout->data_words + 8; /* a slot's pointer ends at ps + 8 * slot */
    PyObject *key, *value;
    while (PyDict_Next(values, &pos, &key, &value)) {
        if (i >= plan->n) {
            unpackable("the dict changed");
            goto done;
        }
        Field *f = &plan->fields[i++];
        int r = 0;
        Py_INCREF(value); /* a nested key order calls wirepack.py: hold what we read */
        switch (f->kind) {
        case K_VOID:
            break;
        case K_BOOL:
            if (value != Py_True && value != Py_False) {
                r = unpackable("not a bool");
                break;
            }
            if ((value == Py_True) != f->bit)
                b->p[at + f->at / 8] |= (char)(1 << (f->at % 8));
            break;
        case K_F32:
        case K_F64:
            r = real(b, at, f, value);
            break;
        case K_ENUM:
            r = enumerant(b, at, f, value);
            break;
        case K_TEXT:
            r = append_text(b, ps + 8 * f->at, value);
            break;
        case K_STRUCT:
            r = nested(b, ps + 8 * f->at, (Layout *)f->extra, value, depth);
            break;
        case K_TEXT_LIST:
            r = text_list(b, ps + 8 * f->at, value);
            break;
        case K_STRUCT_LIST:
            r = struct_list(b, ps + 8 * f->at, (Layout *)f->extra, value, depth);
            break;
        default:
            r = integer(b, at, f, value);
        }
        Py_DECREF(value);
        if (r < 0)
            goto done;
    }
    ok = i == plan->n ? 0 : unpackable("the dict changed");
done:
    Py_DECREF(values);
    return ok;
}

/* --- Layout -------------------------------------------------------------------- */

static void plan_free(Plan *plan) {
    for (Py_ssize_t i = 0; i < plan->n; i++)
        Py_XDECREF(plan->keys[i]);
    if (plan->fields)
        for (Py_ssize_t i = 0; i < plan->n; i++) {
            Py_XDECREF(plan->fields[i].xor);
            Py_XDECREF(plan->fields[i].extra);
        }
    PyMem_Free(plan->keys);
    PyMem_Free(plan->fields);
    PyMem_Free(plan);
}

static void layout_clear_plans(Layout *self) {
    for (Py_ssize_t p = 0; p < self->nplans; p++)
        plan_free(self->plans[p]);
    self->nplans = 0;
}

static PyObject *layout_new(PyTypeObject *type, PyObject *args, PyObject *kwds) {
    Py_ssize_t data_words, pointers;
    PyObject *need;
    static char *names[] = {"data_words", "pointers", "need", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "nnO", names, &data_words, &pointers, &need))
        return NULL;
    if (data_words < 0 || pointers < 0 || data_words > 0xFFFF || pointers > 0xFFFF) {
        PyErr_SetString(PyExc_ValueError, "a struct's size is 16 bits of words each");
        return NULL;
    }
    Layout *self = (Layout *)type->tp_alloc(type, 0);
    if (self == NULL)
        return NULL;
    self->data_words = data_words;
    self->pointers = pointers;
    self->need = Py_NewRef(need);
    return (PyObject *)self;
}

static void layout_dealloc(Layout *self) {
    layout_clear_plans(self);
    PyMem_Free(self->plans);
    Py_XDECREF(self->need);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

/* add(keys, fields): fields None (the key order is refused) or one (kind, at, xor,
 * extra) per key; `at` checked against the struct's size here, once. */
static PyObject *layout_add(Layout *self, PyObject *args) {
    PyObject *keys, *fields;
    if (!PyArg_ParseTuple(args, "O!O", &PyTuple_Type, &keys, &fields))
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(keys);
    if (fields != Py_None && (!PyTuple_Check(fields) || PyTuple_GET_SIZE(fields) != n)) {
        PyErr_SetString(PyExc_ValueError, "one field a key, or None");
        return NULL;
    }
    Plan *plan = PyMem_Calloc(1, sizeof(Plan));
    if (plan == NULL)
        return PyErr_NoMemory();
    plan->keys = PyMem_Calloc(n ? n : 1, sizeof(PyObject *));
    if (plan->keys == NULL) {
        PyMem_Free(plan);
        return PyErr_NoMemory();
    }
    for (Py_ssize_t i = 0; i < n; i++)
        plan->keys[i] = Py_NewRef(PyTuple_GET_ITEM(keys, i));
    plan->n = n;
    if (fields != Py_None) {
        plan->fields = PyMem_Calloc(n ? n : 1, sizeof(Field));
        if (plan->fields == NULL) {
            plan_free(plan);
            return PyErr_NoMemory();
        }
        Py_ssize_t data_bytes = 8 * self->data_words;
        for (Py_ssize_t i = 0; i < n; i++) {
            Field *f = &plan->fields[i];
            int kind;
            Py_ssize_t at;
            PyObject *xor, *extra;
            if (!PyArg_ParseTuple(PyTuple_GET_ITEM(fields, i), "inOO", &kind, &at, &xor, &extra))
                goto bad;
            static const int width[K_COUNT] = {[K_I8] = 1, [K_I16] = 2, [K_I32] = 4, [K_I64] = 8,
                                               [K_U8] = 1, [K_U16] = 2, [K_U32] = 4, [K_U64] = 8,
                                               [K_F32] = 4, [K_F64] = 8, [K_ENUM] = 2};
            int fits;
            if (kind < 0 || kind >= K_COUNT)
                fits = 0;
            else if (kind == K_VOID)
                fits = 1;
            else if (kind == K_BOOL)
                fits = at >= 0 && at < 8 * data_bytes;
            else if (kind >= K_TEXT)
                fits = at >= 0 && at < self->pointers;
            else
                fits = at >= 0 && at + width[kind] <= data_bytes;
            if (!fits) {
                PyErr_Format(PyExc_ValueError, "field %zd: kind %d at %zd outside the struct", i,
                             kind, at);
                goto bad;
            }
            if ((kind == K_STRUCT || kind == K_STRUCT_LIST) &&
                !PyObject_TypeCheck(extra, &LayoutType)) {
                PyErr_SetString(PyExc_TypeError, "a struct field needs its Layout");
                goto bad;
            }
            if (kind == K_ENUM && !PyDict_Check(extra)) {
                PyErr_SetString(PyExc_TypeError, "an enum field needs its name -> number dict");
                goto bad;
            }
            f->kind = kind;
            f->at = at;
            if (kind == K_BOOL) {
                f->bit = PyObject_IsTrue(xor);
                if (f->bit < 0)
                    goto bad;
            } else if (xor != Py_None) {
                if (!PyLong_Check(xor)) {
                    PyErr_SetString(PyExc_TypeError, "a default is an int's XOR bits");
                    goto bad;
                }
                int nonzero = PyObject_IsTrue(xor);
                if (nonzero < 0)
                    goto bad;
                if (nonzero)
                    f->xor = Py_NewRef(xor);
            }
            if (extra != Py_None)
                f->extra = Py_NewRef(extra);
        }
    }
    if (self->nplans == self->cap) {
        Py_ssize_t cap = self->cap ? 2 * self->cap : 4;
        Plan **plans = PyMem_Realloc(self->plans, cap * sizeof(Plan *));
        if (plans == NULL) {
            plan_free(plan);
            return PyErr_NoMemory();
        }
        self->plans = plans;
        self->cap = cap;
    }
    self->plans[self->nplans++] = plan;
    Py_RETURN_NONE;
bad:
    plan_free(plan);
    return NULL;
}

static PyObject *layout_forget(Layout *self, PyObject *Py_UNUSED(ignored)) {
    layout_clear_plans(self);
    Py_RETURN_NONE;
}

static PyObject *layout_orders(Layout *self, void *Py_UNUSED(closure)) {
    return PyLong_FromSsize_t(self->nplans);
}

static PyMethodDef layout_methods[] = {
    {"add", (PyCFunction)layout_add, METH_VARARGS,
     "add(keys, fields): the plan of one key order (fields None: refused)"},
    {"forget", (PyCFunction)layout_forget, METH_NOARGS, "drop every plan"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef layout_getset[] = {
    {"orders", (getter)layout_orders, NULL, "how many key orders have a plan", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject LayoutType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "daemoneye._wirepack.Layout",
    .tp_basicsize = sizeof(Layout),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Layout(data_words, pointers, need): one struct type and its plans",
    .tp_new = layout_new,
    .tp_dealloc = (destructor)layout_dealloc,
    .tp_methods = layout_methods,
    .tp_getset = layout_getset,
};

/* --- module -------------------------------------------------------------------- */

static PyObject *finish(PyObject *module, PyObject *args) {
    Py_buffer prefix;
    Py_ssize_t source_at, boot_at, slot;
    PyObject *source, *boot, *layout, *body;
    if (!PyArg_ParseTuple(args, "y*nUnUnO!O!", &prefix, &source_at, &source, &boot_at, &boot,
                          &slot, &LayoutType, &layout, &PyDict_Type, &body))
        return NULL;
    PyObject *result = NULL;
    Buf b = {NULL, 0, 0};
    if (Unpackable == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "configure() first");
        goto done;
    }
    if (prefix.len < 8 || prefix.len % 8 || source_at < 8 || boot_at < 8 || slot < 8 ||
        source_at + 8 > prefix.len || boot_at + 8 > prefix.len || slot + 8 > prefix.len) {
        PyErr_SetString(PyExc_ValueError, "a pointer outside the prefix");
        goto done;
    }
    if (!PyDict_CheckExact(body)) {
        unpackable("not a dict");
        goto done;
    }
    if (append_zeros(&b, prefix.len) < 0)
        goto done;
    memcpy(b.p, prefix.buf, prefix.len);
    if (append_text(&b, source_at + 8, source) < 0 || append_text(&b, boot_at + 8, boot) < 0 ||
        nested(&b, slot + 8, (Layout *)layout, body, 0) < 0)
        goto done;
    if ((b.len - 8) / 8 > UINT32_MAX) {
        unpackable("a segment beyond 32 bits of words");
        goto done;
    }
    put_le(&b, 0, 0, 4);
    put_le(&b, 4, (uint64_t)((b.len - 8) >> 3), 4);
    result = PyBytes_FromStringAndSize(b.p, b.len);
done:
    PyMem_Free(b.p);
    PyBuffer_Release(&prefix);
    return result;
}

static PyObject *configure(PyObject *module, PyObject *args) {
    PyObject *unpackable_type;
    if (!PyArg_ParseTuple(args, "O", &unpackable_type))
        return NULL;
    if (!PyExceptionClass_Check(unpackable_type)) {
        PyErr_SetString(PyExc_TypeError, "an exception class");
        return NULL;
    }
    Py_XSETREF(Unpackable, Py_NewRef(unpackable_type));
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"finish", finish, METH_VARARGS,
     "finish(prefix, source_at, source, boot_at, boot, slot, layout, body) -> bytes"},
    {"configure", configure, METH_VARARGS, "configure(Unpackable): what a refusal raises"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "daemoneye._wirepack",
    "wirepack's Cap'n Proto writer, compiled", -1, methods,
};

PyMODINIT_FUNC PyInit__wirepack(void) {
    if (PyType_Ready(&LayoutType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL)
        return NULL;
    if (PyModule_AddObjectRef(m, "Layout", (PyObject *)&LayoutType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
