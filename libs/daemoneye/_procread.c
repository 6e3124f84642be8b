/* procfs.py's record read (`python_read_record`), compiled: the same reads of
 * /proc/<pid>, in the same order, and the same record (tests/unit/test_procread.py
 * compares the two on live processes, zombies, kernel threads and reaped ones).
 *
 * The netlink reader reads one record per exec; in Python its parsing and the
 * wrapping of each syscall cost ~115 us of user time a record, more than the
 * syscalls themselves. Built as an optional extension: where no compiler is
 * found, procfs.py's own read runs instead.
 *
 * configure(template, username, parse_env, unified_cgroup, tty_name, clk_tck, page_size)
 *   once, from procfs.py: the record template (procfs._EMPTY, whose keys give the
 *   order) and the Python helpers for what is rare (an environment naming one of
 *   ENV_NAMES, a cgroup v1 or hybrid file, a tty number beyond 64 bits).
 * read_record(pid, dfd, argv | None, stat_raw | None, boot_seconds, own_pid_ns)
 *   -> dict | None. `dfd` is /proc/<pid> opened by procfs.open_dir (left open).
 * take(fd, conn, scratch, journal, limit, until, items, opened | None) -> (n, stamp)
 *   the reader's datagram loop (services/collector/reader.py Reader._take, whose
 *   Python is the reference): peek, journal, parse (netlink.parse_tuples), open the
 *   directory and read the argv of each exec (procfs.open_argv), consume. Per exec it
 *   cost the reader ~0.2 ms of (cold) Python at 200 exec/s, as much as its /proc read. */

#define _GNU_SOURCE /* memmem, memrchr */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <string.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SMALL_CHUNK 4096      /* procfs._SMALL_CHUNK */
#define READ_CHUNK 65536      /* procfs._READ_CHUNK */
#define ENV_READ_BYTES 32768  /* procfs.ENV_READ_BYTES */
#define LINK_MAX_BYTES 4096   /* what os.readlink reads (MAXPATHLEN) */
#define PF_KTHREAD 0x00200000
static const char DELETED[] = " (deleted)";

static PyObject *template_ = NULL, *username_ = NULL, *parse_env_ = NULL;
static PyObject *unified_cgroup_ = NULL, *tty_name_ = NULL, *clk_tck_ = NULL;
static PyObject *page_size_ = NULL, *zero_ = NULL, *thousand_ = NULL, *billion_ = NULL;

enum {
    K_PID, K_PPID, K_START_TICKS, K_START_TIME, K_NAME, K_EXE_PATH, K_CMDLINE, K_CWD, K_ROOT,
    K_UID, K_GID, K_EUID, K_EGID, K_SUID, K_SGID, K_LOGIN_UID, K_USERNAME, K_STATE,
    K_THREADS, K_NICE, K_PGROUP, K_SESSION_ID, K_USER_TIME_MS, K_SYSTEM_TIME_MS,
    K_RESIDENT_BYTES, K_VIRTUAL_BYTES, K_DISK_READ_BYTES, K_DISK_WRITE_BYTES,
    K_EXE_DELETED, K_ON_DISK, K_EXE_DEVICE, K_EXE_INODE, K_EXE_SIZE, K_EXE_MTIME_NS,
    K_EXE_CHANGED, K_CGROUP_PATH, K_CONTAINER_ID, K_PID_NAMESPACE, K_ACCESSIBLE, K_TTY,
    K_ENV, K_COUNT
};
static const char *const KEY_NAMES[K_COUNT] = {
    "pid", "ppid", "startTicks", "startTime", "name", "exePath", "cmdline", "cwd", "root",
    "uid", "gid", "euid", "egid", "suid", "sgid", "loginUid", "username", "state",
    "threads", "nice", "pgroup", "sessionId", "userTimeMs", "systemTimeMs",
    "residentBytes", "virtualBytes", "diskReadBytes", "diskWriteBytes",
    "exeDeleted", "onDisk", "exeDevice", "exeInode", "exeSize", "exeMtimeNs",
    "exeChangedAfterExec", "cgroupPath", "containerId", "pidNamespace", "accessible", "tty",
    "env",
};
static PyObject *keys[K_COUNT];

/* --- reads: each syscall with the GIL released, as os.open/os.read do ----------------- */

typedef struct {
    char *data; /* NULL: not read (procfs's None) */
    Py_ssize_t size;
} Buf;

static void buf_free(Buf *b) {
    PyMem_RawFree(b->data);
    b->data = NULL;
    b->size = 0;
}

static int open_at(int dfd, const char *name) {
    int fd;
    Py_BEGIN_ALLOW_THREADS
    do {
        fd = openat(dfd, name, O_RDONLY | O_CLOEXEC);
    } while (fd < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    return fd;
}

static ssize_t read_some(int fd, char *into, size_t size) {
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    do {
        n = read(fd, into, size);
    } while (n < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    return n;
}

static void close_fd(int fd) {
    Py_BEGIN_ALLOW_THREADS
    close(fd);
    Py_END_ALLOW_THREADS
}

/* procfs._read_fd: `first` bytes, and when that filled them (and `to_end`), on to the
 * end in READ_CHUNKs; any read failing: nothing (data NULL). The fd is closed.
 * Returns -1 (MemoryError set) or 0. */
static int read_fd(int fd, size_t first, int to_end, Buf *out) {
    out->data = NULL;
    out->size = 0;
    size_t cap = first, used = 0;
    char *data = PyMem_RawMalloc(cap);
    if (data == NULL) {
        close_fd(fd);
        PyErr_NoMemory();
        return -1;
    }
    ssize_t n = read_some(fd, data, first);
    if (n >= 0)
        used = (size_t)n;
    if (to_end && n == (ssize_t)first) {
        for (;;) {
            if (cap - used < READ_CHUNK) {
                char *grown = PyMem_RawRealloc(data, cap + READ_CHUNK);
                if (grown == NULL) {
                    PyMem_RawFree(data);
                    close_fd(fd);
                    PyErr_NoMemory();
                    return -1;
                }
                data = grown;
                cap += READ_CHUNK;
            }
            n = read_some(fd, data + used, READ_CHUNK);
            if (n <= 0)
                break;
            used += (size_t)n;
        }
    }
    close_fd(fd);
    if (n < 0) {
        PyMem_RawFree(data);
        return 0;
    }
    out->data = data;
    out->size = (Py_ssize_t)used;
    return 0;
}

/* procfs._read_at */
static int read_at(int dfd, const char *name, Buf *out) {
    out->data = NULL;
    out->size = 0;
    int fd = open_at(dfd, name);
    if (fd < 0)
        return 0;
    return read_fd(fd, SMALL_CHUNK, 1, out);
}

/* os.readlink into `into` (LINK_MAX_BYTES): its length, or -1 */
static ssize_t read_link(int dfd, const char *name, char *into) {
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    n = readlinkat(dfd, name, into, LINK_MAX_BYTES);
    Py_END_ALLOW_THREADS
    return n;
}

static int stat_at(int dfd, const char *name, struct stat *st) {
    int r;
    Py_BEGIN_ALLOW_THREADS
    do {
        r = fstatat(dfd, name, st, 0);
    } while (r < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    return r;
}

/* --- parsing, as bytes methods do it --------------------------------------------------- */

static inline int is_space(char c) { /* bytes.split()'s whitespace, and int()'s */
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\x0b' || c == '\x0c';
}

static Py_ssize_t find(const char *s, Py_ssize_t n, Py_ssize_t from, const char *what) {
    size_t w = strlen(what);
    if (from < 0 || from > n)
        return -1;
    const char *at = memmem(s + from, (size_t)(n - from), what, w);
    return at ? at - s : -1;
}

static Py_ssize_t rfind_char(const char *s, Py_ssize_t n, char c) {
    const char *at = memrchr(s, c, (size_t)n);
    return at ? at - s : -1;
}

/* bytes.split() of s[0:n] into at most `max` (start, length) tokens; returns the count
 * of all tokens (which may exceed max) */
static Py_ssize_t split_ws(const char *s, Py_ssize_t n, Py_ssize_t *start, Py_ssize_t *len,
                           Py_ssize_t max) {
    Py_ssize_t count = 0, i = 0;
    while (i < n) {
        while (i < n && is_space(s[i]))
            i++;
        if (i >= n)
            break;
        Py_ssize_t j = i;
        while (j < n && !is_space(s[j]))
            j++;
        if (count < max) {
            start[count] = i;
            len[count] = j - i;
        }
        count++;
        i = j;
    }
    return count;
}

/* int(s[0:n]) of bytes: plain decimals at once, anything else as int() takes it */
static PyObject *int_of(const char *s, Py_ssize_t n) {
    Py_ssize_t i = 0, j = n;
    while (i < j && is_space(s[i]))
        i++;
    while (j > i && is_space(s[j - 1]))
        j--;
    int negative = i < j && s[i] == '-';
    Py_ssize_t k = i + negative;
    if (j > k && j - k <= 18) {
        long long v = 0;
        Py_ssize_t m = k;
        for (; m < j && s[m] >= '0' && s[m] <= '9'; m++)
            v = v * 10 + (s[m] - '0');
        if (m == j)
            return PyLong_FromLongLong(negative ? -v : v);
    }
    PyObject *raw = PyBytes_FromStringAndSize(s, n);
    if (raw == NULL)
        return NULL;
    PyObject *v = PyNumber_Long(raw);
    Py_DECREF(raw);
    return v;
}

static int set(PyObject *rec, int key, PyObject *value) { /* steals value */
    if (value == NULL)
        return -1;
    int r = PyDict_SetItem(rec, keys[key], value);
    Py_DECREF(value);
    return r;
}

static int set_str(PyObject *rec, int key, const char *s, Py_ssize_t n) {
    return set(rec, key, PyUnicode_DecodeUTF8(s, n, "replace"));
}

static int set_path(PyObject *rec, int key, const char *s, Py_ssize_t n) { /* os.readlink's */
    return set(rec, key, PyUnicode_DecodeFSDefaultAndSize(s, n));
}

static int set_bool(PyObject *rec, int key, int value) {
    return set(rec, key, PyBool_FromLong(value));
}

static PyObject *call1(PyObject *f, PyObject *arg) { /* steals arg */
    if (arg == NULL)
        return NULL;
    PyObject *out = PyObject_CallOneArg(f, arg);
    Py_DECREF(arg);
    return out;
}

/* procfs._argv: None, [], or the NUL-separated strings */
static PyObject *argv_of(const Buf *b) {
    if (b->data == NULL)
        Py_RETURN_NONE;
    Py_ssize_t n = b->size;
    while (n > 0 && b->data[n - 1] == '\0')
        n--;
    if (b->size == 0)
        return PyList_New(0);
    PyObject *text = PyUnicode_DecodeUTF8(b->data, n, "replace");
    if (text == NULL)
        return NULL;
    PyObject *nul = PyUnicode_FromStringAndSize("\0", 1);
    if (nul == NULL) {
        Py_DECREF(text);
        return NULL;
    }
    PyObject *out = PyUnicode_Split(text, nul, -1);
    Py_DECREF(nul);
    Py_DECREF(text);
    return out;
}

/* max(0, v), for ids a kernel or a namespace may give as -1 */
static PyObject *at_least_zero(PyObject *v) { /* steals v */
    if (v == NULL)
        return NULL;
    int negative = PyObject_RichCompareBool(v, zero_, Py_LT);
    if (negative < 0) {
        Py_DECREF(v);
        return NULL;
    }
    if (negative) {
        Py_DECREF(v);
        return PyLong_FromLong(0);
    }
    return v;
}

/* ticks * 1000 // CLK_TCK */
static PyObject *ms_of_ticks(PyObject *ticks) { /* steals ticks */
    if (ticks == NULL)
        return NULL;
    PyObject *ms = PyNumber_Multiply(ticks, thousand_);
    Py_DECREF(ticks);
    if (ms == NULL)
        return NULL;
    PyObject *out = PyNumber_FloorDivide(ms, clk_tck_);
    Py_DECREF(ms);
    return out;
}

/* procfs.tty_name */
static PyObject *tty_of(PyObject *tty_nr) { /* steals tty_nr */
    if (tty_nr == NULL)
        return NULL;
    int overflow = 0;
    long long nr = PyLong_AsLongLongAndOverflow(tty_nr, &overflow);
    if (overflow || (nr == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        return call1(tty_name_, tty_nr);
    }
    Py_DECREF(tty_nr);
    if (nr == 0)
        return PyUnicode_FromStringAndSize("", 0);
    long long major = (nr >> 8) & 0xFFF;
    long long minor = (nr & 0xFF) | ((nr >> 12) & 0xFFF00);
    if (major >= 136 && major <= 143)
        return PyUnicode_FromFormat("pts/%lld", (major - 136) * 256 + minor);
    if (major == 4)
        return minor < 64 ? PyUnicode_FromFormat("tty%lld", minor)
                          : PyUnicode_FromFormat("ttyS%lld", minor - 64);
    return PyUnicode_FromFormat("%lld:%lld", major, minor);
}

#define STAT_FIELDS 22

typedef struct {
    Py_ssize_t open_at, close_at; /* the first '(' and the last ')': the comm between */
    Py_ssize_t start[STAT_FIELDS], len[STAT_FIELDS];
} StatSplit;

/* parse_stat's checks: whether it gives a Stat (its fields split) or None */
static int split_stat(const Buf *raw, StatSplit *out) {
    const char *s = raw->data;
    Py_ssize_t n = raw->size;
    const char *paren = memchr(s, '(', (size_t)n);
    Py_ssize_t open_at = paren ? paren - s : -1;
    Py_ssize_t close_at = rfind_char(s, n, ')');
    if (open_at < 0 || close_at < open_at)
        return 0;
    out->open_at = open_at;
    out->close_at = close_at;
    Py_ssize_t from = close_at + 2 < n ? close_at + 2 : n;
    Py_ssize_t count = split_ws(s + from, n - from, out->start, out->len, STAT_FIELDS);
    for (int i = 0; i < STAT_FIELDS && i < count; i++)
        out->start[i] += from;
    return count >= STAT_FIELDS;
}

#define FIELD(k) (raw->data + sp->start[k]), sp->len[k]

/* procfs.apply_stat(rec, parse_stat(pid, raw)) */
static int apply_stat(PyObject *rec, const Buf *raw, const StatSplit *sp, PyObject *boot) {
    Py_ssize_t name_at = sp->open_at + 1;
    if (set_str(rec, K_NAME, raw->data + name_at, sp->close_at - name_at) < 0
        || set(rec, K_STATE, PyUnicode_FromStringAndSize(FIELD(0))) < 0
        || set(rec, K_PPID, at_least_zero(int_of(FIELD(1)))) < 0
        || set(rec, K_PGROUP, at_least_zero(int_of(FIELD(2)))) < 0
        || set(rec, K_SESSION_ID, at_least_zero(int_of(FIELD(3)))) < 0
        || set(rec, K_TTY, tty_of(int_of(FIELD(4)))) < 0
        || set(rec, K_USER_TIME_MS, ms_of_ticks(int_of(FIELD(11)))) < 0
        || set(rec, K_SYSTEM_TIME_MS, ms_of_ticks(int_of(FIELD(12)))) < 0
        || set(rec, K_NICE, int_of(FIELD(16))) < 0 || set(rec, K_THREADS, int_of(FIELD(17))) < 0
        || set(rec, K_START_TICKS, int_of(FIELD(19))) < 0
        || set(rec, K_VIRTUAL_BYTES, int_of(FIELD(20))) < 0)
        return -1;
    PyObject *ticks = PyDict_GetItemWithError(rec, keys[K_START_TICKS]); /* borrowed */
    PyObject *since = ticks ? PyNumber_TrueDivide(ticks, clk_tck_) : NULL;
    if (since == NULL)
        return -1;
    PyObject *start = PyNumber_Add(boot, since); /* start_time_of */
    Py_DECREF(since);
    if (set(rec, K_START_TIME, start) < 0)
        return -1;
    PyObject *resident = int_of(FIELD(21));
    if (resident == NULL)
        return -1;
    PyObject *resident_bytes = PyNumber_Multiply(resident, page_size_);
    Py_DECREF(resident);
    return set(rec, K_RESIDENT_BYTES, resident_bytes);
}

/* procfs._is_kernel_thread, of a stat that parsed (its field 9, the flags, split) */
static int is_kernel_thread(const Buf *raw, const StatSplit *sp) {
    PyObject *flags = int_of(FIELD(6));
    if (flags == NULL)
        return -1;
    PyObject *kthread = PyLong_FromLong(PF_KTHREAD);
    PyObject *both = kthread ? PyNumber_And(flags, kthread) : NULL; /* any size, as int() */
    Py_DECREF(flags);
    Py_XDECREF(kthread);
    if (both == NULL)
        return -1;
    int kernel = PyObject_IsTrue(both);
    Py_DECREF(both);
    return kernel;
}

/* procfs._apply_exe: 1 read (or nothing to read), 0 not, -1 an error */
static int apply_exe(PyObject *rec, int dfd, const Buf *raw, const StatSplit *sp, int zombie) {
    char link[LINK_MAX_BYTES + 1];
    ssize_t n = read_link(dfd, "exe", link);
    if (n < 0)
        return zombie ? 1 : is_kernel_thread(raw, sp);
    size_t suffix = sizeof(DELETED) - 1;
    int deleted = (size_t)n >= suffix && memcmp(link + n - suffix, DELETED, suffix) == 0;
    if (deleted) {
        n -= (ssize_t)suffix;
        if (set_bool(rec, K_EXE_DELETED, 1) < 0)
            return -1;
    }
    link[n] = '\0';
    if (set_path(rec, K_EXE_PATH, link, n) < 0)
        return -1;
    struct stat info, on_path;
    if (stat_at(dfd, "exe", &info) < 0)
        return 1;
    long long mtime_ns = (long long)info.st_mtim.tv_sec * 1000000000LL + info.st_mtim.tv_nsec;
    if (set(rec, K_EXE_DEVICE, PyLong_FromUnsignedLongLong(info.st_dev)) < 0
        || set(rec, K_EXE_INODE, PyLong_FromUnsignedLongLong(info.st_ino)) < 0
        || set(rec, K_EXE_SIZE, PyLong_FromLongLong(info.st_size)) < 0
        || set(rec, K_EXE_MTIME_NS, PyLong_FromLongLong(mtime_ns)) < 0)
        return -1;
    /* a name with a NUL cannot be: os.stat would refuse it, readlink never gives one */
    int found = memchr(link, '\0', (size_t)n) == NULL && stat_at(AT_FDCWD, link, &on_path) == 0;
    int same = found && on_path.st_dev == info.st_dev && on_path.st_ino == info.st_ino;
    if (set(rec, K_ON_DISK, PyLong_FromLong(same && !deleted ? 1 : 0)) < 0)
        return -1;
    /* written after the process started (1 s slack: start time has tick resolution),
     * or the path now names another file: int(startTime * 1e9) + 1e9 < mtime */
    PyObject *start = PyDict_GetItemWithError(rec, keys[K_START_TIME]);
    double start_s = start ? PyFloat_AsDouble(start) : -1.0;
    if (start == NULL || (start_s == -1.0 && PyErr_Occurred()))
        return -1;
    PyObject *whole = PyLong_FromDouble(start_s * 1e9);
    PyObject *limit = whole ? PyNumber_Add(whole, billion_) : NULL;
    Py_XDECREF(whole);
    PyObject *mtime = PyDict_GetItemWithError(rec, keys[K_EXE_MTIME_NS]);
    int after = limit && mtime ? PyObject_RichCompareBool(mtime, limit, Py_GT) : -1;
    Py_XDECREF(limit);
    if (after < 0)
        return -1;
    if (set_bool(rec, K_EXE_CHANGED, after || (found && !same)) < 0)
        return -1;
    return 1;
}

/* procfs._apply_status's "Uid:"/"Gid:" lines: -1 an error */
static int apply_ids(PyObject *rec, const Buf *b, const char *tag, int k0, int k1, int k2) {
    Py_ssize_t at = find(b->data, b->size, 0, tag);
    if (at < 0)
        return 0;
    Py_ssize_t from = at + 5;
    Py_ssize_t end = find(b->data, b->size, from, "\n");
    if (end < 0) /* data[at + 5 : -1], as the Python slice does */
        end = b->size - 1;
    Py_ssize_t start[3], len[3];
    Py_ssize_t count = end > from ? split_ws(b->data + from, end - from, start, len, 3) : 0;
    const int key[3] = {k0, k1, k2};
    PyObject *ids[3] = {NULL, NULL, NULL};
    int r = 0;
    for (int i = 0; i < 3 && r == 0; i++) { /* int(ids[0]), int(ids[1]), int(ids[2]) */
        if (i >= count) {
            PyErr_SetString(PyExc_IndexError, "list index out of range");
            r = -1;
        } else if ((ids[i] = int_of(b->data + from + start[i], len[i])) == NULL) {
            r = -1;
        }
    }
    for (int i = 0; i < 3; i++) {
        if (r == 0 && PyDict_SetItem(rec, keys[key[i]], ids[i]) < 0)
            r = -1;
        Py_XDECREF(ids[i]);
    }
    return r;
}

/* procfs._single_nspid */
static int single_nspid(const Buf *status) {
    Py_ssize_t at = find(status->data, status->size, 0, "\nNSpid:");
    if (at < 0)
        return 0;
    Py_ssize_t end = find(status->data, status->size, at + 7, "\n");
    if (end < 0)
        end = status->size;
    Py_ssize_t start[2], len[2];
    return split_ws(status->data + at + 7, end - (at + 7), start, len, 2) == 1;
}

/* procfs._io_field */
static PyObject *io_field(const Buf *io, const char *name) {
    Py_ssize_t at = find(io->data, io->size, 0, name);
    if (at < 0)
        return PyLong_FromLong(0);
    Py_ssize_t from = at + (Py_ssize_t)strlen(name);
    Py_ssize_t end = find(io->data, io->size, from, "\n");
    return int_of(io->data + from, (end >= 0 ? end : io->size) - from);
}

/* procfs._CONTAINER_ID_B.search(cg)[:12]: the first run of 64 lowercase hex digits */
static PyObject *container_of(const Buf *cg) {
    Py_ssize_t run = 0;
    for (Py_ssize_t i = 0; i < cg->size; i++) {
        char c = cg->data[i];
        if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f')) {
            if (++run == 64)
                return PyUnicode_FromStringAndSize(cg->data + i - 63, 12);
        } else {
            run = 0;
        }
    }
    return PyUnicode_FromStringAndSize("", 0);
}

/* str.splitlines breaks an ASCII line at these too (procfs._ODD_BREAK), and bytes
 * beyond ASCII are decoded first: both left to Python */
static int plain_lines(const Buf *cg) {
    for (Py_ssize_t i = 0; i < cg->size; i++) {
        unsigned char c = (unsigned char)cg->data[i];
        if (c >= 0x80 || c == '\r' || c == 0x0b || c == 0x0c || (c >= 0x1c && c <= 0x1e))
            return 0;
    }
    return 1;
}

/* the line starting at `*at` (its end, without the \n) and where the next one starts */
static Py_ssize_t line_end(const Buf *cg, Py_ssize_t *at) {
    const char *nl = memchr(cg->data + *at, '\n', (size_t)(cg->size - *at));
    Py_ssize_t end = nl ? nl - cg->data : cg->size;
    Py_ssize_t start = *at;
    *at = end + 1;
    return end - start;
}

static int is_top(const char *s, Py_ssize_t n) { return n == 1 && s[0] == '/'; }

/* procfs._cgroup_of_lines over plain lines (bytes.split(b"\n") without a last empty
 * piece): the unified (v2) path, else the most specific controller path (v1). Python
 * also takes a lone line's "0::" path when it is the top one: "/" here too, at the end */
static PyObject *cgroup_of_lines(const Buf *cg) {
    Py_ssize_t at;
    for (at = 0; at < cg->size;) {
        const char *s = cg->data + at;
        Py_ssize_t n = line_end(cg, &at);
        if (n >= 3 && memcmp(s, "0::", 3) == 0 && !is_top(s + 3, n - 3))
            return PyUnicode_FromStringAndSize(s + 3, n - 3);
    }
    for (at = 0; at < cg->size;) {
        const char *s = cg->data + at;
        Py_ssize_t n = line_end(cg, &at);
        /* line.split(":", 2)[-1] */
        const char *one = memchr(s, ':', (size_t)n);
        if (one != NULL) {
            const char *two = memchr(one + 1, ':', (size_t)(s + n - one - 1));
            const char *from = (two != NULL ? two : one) + 1;
            n -= from - s;
            s = from;
        }
        if (!is_top(s, n))
            return PyUnicode_FromStringAndSize(s, n);
    }
    return PyUnicode_FromStringAndSize("/", 1);
}

/* procfs._unified_cgroup: cgroup v2 alone, and v1 or hybrid files of plain lines, here;
 * the rest in Python */
static PyObject *cgroup_of(const Buf *cg) {
    Py_ssize_t lines = 0;
    for (Py_ssize_t i = 0; i < cg->size; i++)
        lines += cg->data[i] == '\n';
    if (cg->size >= 3 && memcmp(cg->data, "0::", 3) == 0 && lines <= 1) {
        Py_ssize_t n = cg->size;
        while (n > 3 && cg->data[n - 1] == '\n')
            n--;
        return PyUnicode_DecodeUTF8(cg->data + 3, n - 3, "replace");
    }
    if (plain_lines(cg))
        return cgroup_of_lines(cg);
    return call1(unified_cgroup_, PyBytes_FromStringAndSize(cg->data, cg->size));
}

/* procfs._env_at */
static PyObject *env_of(int dfd) {
    int fd = open_at(dfd, "environ");
    if (fd < 0)
        return PyList_New(0);
    Buf env;
    if (read_fd(fd, ENV_READ_BYTES, 0, &env) < 0)
        return NULL;
    if (env.data == NULL)
        return PyList_New(0);
    PyObject *out;
    if (memmem(env.data, (size_t)env.size, "LD_", 3) == NULL
        && memmem(env.data, (size_t)env.size, "HIST", 4) == NULL)
        out = PyList_New(0); /* the usual case: nothing to split */
    else
        out = call1(parse_env_, PyBytes_FromStringAndSize(env.data, env.size));
    buf_free(&env);
    return out;
}

/* the rest of a record once its status was read (_read_record from the cgroup on) */
static int apply_rest(PyObject *rec, int dfd, const Buf *status, int zombie, long long own_ns) {
    Buf cg, login, io;
    int r = 0;
    if (read_at(dfd, "cgroup", &cg) < 0)
        return -1;
    if (cg.size) {
        r = set(rec, K_CGROUP_PATH, cgroup_of(&cg));
        if (r == 0)
            r = set(rec, K_CONTAINER_ID, container_of(&cg));
    }
    buf_free(&cg);
    if (r < 0 || read_at(dfd, "loginuid", &login) < 0)
        return -1;
    if (login.size)
        r = set(rec, K_LOGIN_UID, int_of(login.data, login.size));
    buf_free(&login);
    if (r < 0)
        return -1;
    /* procfs._pid_namespace */
    PyObject *ns = NULL;
    if (!zombie && single_nspid(status) && own_ns > 0) {
        ns = PyLong_FromLongLong(own_ns);
    } else {
        char link[LINK_MAX_BYTES + 1];
        ssize_t n = read_link(dfd, "ns/pid", link);
        if (n >= 5 && memcmp(link, "pid:[", 5) == 0) {
            /* int(ns[5:-1]) */
            PyObject *text = PyUnicode_DecodeFSDefaultAndSize(link + 5, n > 5 ? n - 6 : 0);
            ns = text ? PyNumber_Long(text) : NULL;
            Py_XDECREF(text);
        } else {
            ns = PyLong_FromLong(0);
        }
    }
    if (set(rec, K_PID_NAMESPACE, ns) < 0)
        return -1;
    if (read_at(dfd, "io", &io) < 0) /* root or the owner only: not counted */
        return -1;
    if (io.size) {
        r = set(rec, K_DISK_READ_BYTES, io_field(&io, "\nread_bytes:"));
        if (r == 0)
            r = set(rec, K_DISK_WRITE_BYTES, io_field(&io, "\nwrite_bytes:"));
    }
    buf_free(&io);
    return r;
}

static int set_username(PyObject *rec) {
    PyObject *uid = PyDict_GetItemWithError(rec, keys[K_UID]);
    if (uid == NULL)
        return -1;
    return set(rec, K_USERNAME, PyObject_CallOneArg(username_, uid));
}

/* procfs.python_read_record after the stat parsed: -1 an error */
static int read_the_rest(PyObject *rec, int dfd, PyObject *cmd, const Buf *raw,
                         const StatSplit *sp, PyObject *boot, long long own_ns) {
    if (apply_stat(rec, raw, sp, boot) < 0)
        return -1;
    int zombie = sp->len[0] == 1 && raw->data[sp->start[0]] == 'Z';
    int ok = 1;
    if (cmd == Py_None)
        ok = 0;
    else if (PyDict_SetItem(rec, keys[K_CMDLINE], cmd) < 0)
        return -1;
    /* what the exit takes away (environ, exe, cwd, root) before what stays until reaped */
    if (set(rec, K_ENV, env_of(dfd)) < 0)
        return -1;
    int exe = apply_exe(rec, dfd, raw, sp, zombie);
    if (exe < 0)
        return -1;
    ok &= exe;
    char link[LINK_MAX_BYTES + 1];
    ssize_t n = read_link(dfd, "cwd", link);
    if (n < 0)
        ok = 0;
    else if (set_path(rec, K_CWD, link, n) < 0)
        return -1;
    n = read_link(dfd, "root", link);
    if (n < 0)
        ok = 0;
    else if (set_path(rec, K_ROOT, link, n) < 0)
        return -1;
    Buf status;
    if (read_at(dfd, "status", &status) < 0)
        return -1;
    if (status.size == 0) {
        /* reaped (every process has it, a zombie too): what follows would fail too */
        buf_free(&status);
        if (set_username(rec) < 0)
            return -1;
        return set_bool(rec, K_ACCESSIBLE, zombie);
    }
    int r = apply_ids(rec, &status, "\nUid:", K_UID, K_EUID, K_SUID);
    if (r == 0)
        r = apply_ids(rec, &status, "\nGid:", K_GID, K_EGID, K_SGID);
    if (r == 0)
        r = apply_rest(rec, dfd, &status, zombie, own_ns);
    buf_free(&status);
    if (r < 0 || set_username(rec) < 0)
        return -1;
    return set_bool(rec, K_ACCESSIBLE, ok || zombie);
}

static PyObject *read_record(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 6) {
        PyErr_SetString(PyExc_TypeError,
                        "read_record(pid, dfd, argv, stat_raw, boot_seconds, own_pid_ns)");
        return NULL;
    }
    if (template_ == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "_procread.configure() was not called");
        return NULL;
    }
    PyObject *pid = args[0], *cmd = args[2], *stat_raw = args[3], *boot = args[4];
    long dfd_l = PyLong_AsLong(args[1]);
    long long own_ns = PyLong_AsLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (dfd_l < 0 || dfd_l > INT_MAX) {
        PyErr_SetString(PyExc_ValueError, "dfd: a file descriptor");
        return NULL;
    }
    int dfd = (int)dfd_l;
    if (stat_raw != Py_None && !PyBytes_Check(stat_raw)) {
        PyErr_SetString(PyExc_TypeError, "stat_raw: bytes or None");
        return NULL;
    }
    PyObject *rec = PyDict_Copy(template_);
    if (rec == NULL)
        return NULL;
    if (PyDict_SetItem(rec, keys[K_PID], pid) < 0 || set(rec, K_CMDLINE, PyList_New(0)) < 0
        || set(rec, K_ENV, PyList_New(0)) < 0)
        goto error;
    Py_INCREF(cmd);
    Buf raw = {NULL, 0}, read_raw = {NULL, 0};
    if (cmd == Py_None) { /* argv first: for a process that lives a millisecond, it is all */
        Buf argv;
        if (read_at(dfd, "cmdline", &argv) < 0)
            goto error_cmd;
        Py_DECREF(cmd);
        cmd = argv_of(&argv);
        buf_free(&argv);
        if (cmd == NULL)
            goto error;
    }
    if (stat_raw != Py_None && PyBytes_GET_SIZE(stat_raw)) {
        raw.data = PyBytes_AS_STRING(stat_raw);
        raw.size = PyBytes_GET_SIZE(stat_raw);
    } else {
        if (read_at(dfd, "stat", &read_raw) < 0)
            goto error_cmd;
        raw = read_raw;
    }
    StatSplit sp;
    if (raw.size == 0 || !split_stat(&raw, &sp)) {
        buf_free(&read_raw);
        if (cmd == Py_None) {
            Py_DECREF(cmd);
            Py_DECREF(rec);
            Py_RETURN_NONE;
        }
        if (set(rec, K_CMDLINE, cmd) < 0 || set_bool(rec, K_ACCESSIBLE, 0) < 0)
            goto error;
        return rec;
    }
    int r = read_the_rest(rec, dfd, cmd, &raw, &sp, boot, own_ns);
    buf_free(&read_raw);
    Py_DECREF(cmd);
    if (r < 0)
        goto error;
    return rec;
error_cmd:
    Py_DECREF(cmd);
error:
    Py_DECREF(rec);
    return NULL;
}

/* --- the reader's datagram take (reader.py Reader._take, netlink.parse_tuples) --------- */

#define NLMSG_HDR_SIZE 16   /* netlink.NLMSG_HDR: len, type, flags, seq, pid */
#define CN_SEQ_AT 8         /* netlink.CN_MSG's seq: after idx and val */
#define HEADER_LEN 36       /* netlink.HEADER_LEN: NLMSG_HDR + CN_MSG */
#define EVENT_HDR_SIZE 16   /* netlink.EVENT_HDR: what, cpu, timestamp_ns */
#define NLMSG_ERROR_TYPE 2
#define DATAGRAM_MAX 65536  /* reader.DATAGRAM_MAX */
#define FRAME_SIZE 4        /* reader.FRAME and JOURNAL_HEAD: one u32 */
#define EV_FORK 0x1u
#define EV_EXEC 0x2u
#define EV_UID 0x4u
#define EV_GID 0x40u
#define EV_COMM 0x200u
#define EV_EXIT 0x80000000u
#define EV_MALFORMED 0xFFFFFFFFu

static uint32_t u32_at(const char *p) {
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

static uint64_t u64_at(const char *p) {
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return v;
}

/* netlink._body: one event's tuple (what, ts, tgid, pid, ppid, real, eff, code, sig,
 * comm, cpu, seq) */
static PyObject *event_tuple(uint32_t what, uint64_t ts, const char *data, size_t body,
                             size_t end, uint32_t cpu, uint32_t seq, int *wanted,
                             unsigned long *process) {
    size_t room = end - body;
    const char *b = data + body;
    long long tgid = 0, pid = 0, ppid = 0, real = -1, eff = -1, code = 0, sig = 0;
    PyObject *comm = NULL;
    if (what == EV_FORK && room >= 16) {
        ppid = u32_at(b + 4), pid = u32_at(b + 8), tgid = u32_at(b + 12);
    } else if (what == EV_EXEC && room >= 8) {
        pid = u32_at(b), tgid = u32_at(b + 4);
    } else if (what == EV_EXIT && room >= 16) {
        pid = u32_at(b), tgid = u32_at(b + 4), code = u32_at(b + 8), sig = u32_at(b + 12);
        if (room >= 24)
            ppid = u32_at(b + 20);
    } else if ((what == EV_UID || what == EV_GID) && room >= 16) {
        pid = u32_at(b), tgid = u32_at(b + 4), real = u32_at(b + 8), eff = u32_at(b + 12);
    } else if (what == EV_COMM && room >= 24) {
        pid = u32_at(b), tgid = u32_at(b + 4);
        const char *nul = memchr(b + 8, '\0', 16);
        comm = PyUnicode_DecodeUTF8(b + 8, nul ? nul - (b + 8) : 16, "replace");
        if (comm == NULL)
            return NULL;
    } else if (what == EV_FORK || what == EV_EXEC || what == EV_EXIT || what == EV_UID
               || what == EV_GID || what == EV_COMM) {
        what = EV_MALFORMED; /* a known kind with a body too short to read */
    }
    if (comm == NULL && (comm = PyUnicode_FromStringAndSize(NULL, 0)) == NULL)
        return NULL;
    /* reader.wanted: an exec, or a process's (not a thread's) new ids */
    *wanted = what == EV_EXEC || ((what == EV_UID || what == EV_GID) && tgid == pid);
    *process = (unsigned long)tgid;
    return Py_BuildValue("(kKLLLLLLLNkk)", (unsigned long)what, (unsigned long long)ts, tgid,
                         pid, ppid, real, eff, code, sig, comm, (unsigned long)cpu,
                         (unsigned long)seq);
}

/* reader._stamp: the kernel time of a datagram's first event; 0 when it has none */
static uint64_t stamp_of(const char *data, size_t size) {
    if (size < HEADER_LEN + EVENT_HDR_SIZE)
        return 0;
    return u64_at(data + HEADER_LEN + 8);
}

/* reader.Reader._journal_add: 0 when the journal has no room for it */
static int journal_add(Py_buffer *journal, const char *data, size_t size) {
    char *j = journal->buf;
    size_t used = u32_at(j);
    size_t at = FRAME_SIZE + used, end = at + FRAME_SIZE + size;
    if (end > (size_t)journal->len)
        return 0;
    uint32_t len = (uint32_t)size, now_used = (uint32_t)(end - FRAME_SIZE);
    memcpy(j + at, &len, FRAME_SIZE);
    memcpy(j + at + FRAME_SIZE, data, size);
    memcpy(j, &now_used, FRAME_SIZE); /* then it counts */
    return 1;
}

/* (at, *procfs.open_argv(pid)): the directory fd or None, the argv or None */
static PyObject *open_argv(Py_ssize_t at, unsigned long pid) {
    char path[32];
    snprintf(path, sizeof path, "/proc/%lu", pid);
    int dfd;
    Py_BEGIN_ALLOW_THREADS
    do {
        dfd = open(path, O_PATH | O_DIRECTORY | O_CLOEXEC);
    } while (dfd < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    if (dfd < 0)
        return Py_BuildValue("(nOO)", at, Py_None, Py_None);
    Buf argv;
    if (read_at(dfd, "cmdline", &argv) < 0) {
        close_fd(dfd);
        return NULL;
    }
    PyObject *list = argv_of(&argv);
    buf_free(&argv);
    if (list == NULL) {
        close_fd(dfd);
        return NULL;
    }
    return Py_BuildValue("(niN)", at, dfd, list);
}

/* list.append(obj), the reference to obj given up (NULL: the error already set) */
static int append_new(PyObject *list, PyObject *obj) {
    if (obj == NULL)
        return -1;
    int r = PyList_Append(list, obj);
    Py_DECREF(obj);
    return r;
}

/* netlink.parse_tuples into `items` as (ev, None, 0); with `opened`, the directory and
 * argv of each exec (and each process's new ids) first, as (index in items, dfd, argv) */
static int parse_into(const char *data, size_t size, PyObject *items, PyObject *opened) {
    size_t offset = 0;
    while (offset + NLMSG_HDR_SIZE <= size) {
        size_t length = u32_at(data + offset);
        uint16_t type;
        memcpy(&type, data + offset + 4, sizeof type);
        if (length < NLMSG_HDR_SIZE || offset + length > size)
            break;
        if (type != NLMSG_ERROR_TYPE && length >= HEADER_LEN + EVENT_HDR_SIZE) {
            uint32_t seq = u32_at(data + offset + NLMSG_HDR_SIZE + CN_SEQ_AT);
            size_t at = offset + HEADER_LEN;
            uint32_t what = u32_at(data + at), cpu = u32_at(data + at + 4);
            uint64_t ts = u64_at(data + at + 8);
            int wanted = 0;
            unsigned long process = 0;
            PyObject *ev = event_tuple(what, ts, data, at + EVENT_HDR_SIZE, offset + length, cpu,
                                       seq, &wanted, &process);
            if (ev == NULL)
                return -1;
            if (opened != Py_None && wanted
                && append_new(opened, open_argv(PyList_GET_SIZE(items), process)) < 0) {
                Py_DECREF(ev);
                return -1;
            }
            if (append_new(items, Py_BuildValue("(NOi)", ev, Py_None, 0)) < 0)
                return -1;
        }
        offset += (length + 3) & ~(size_t)3;
    }
    return 0;
}

/* reader._count_overrun: ENOBUFS (the kernel dropped datagrams) counted on the
 * connector, with a loss marker in the frame; any other error raised */
static int overrun(int err, PyObject *conn, PyObject *items) {
    if (err != ENOBUFS) {
        errno = err;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    PyObject *lost = PyObject_GetAttrString(conn, "lost");
    if (lost == NULL)
        return -1;
    PyObject *one = PyLong_FromLong(1);
    PyObject *more = one == NULL ? NULL : PyNumber_Add(lost, one);
    Py_XDECREF(one);
    Py_DECREF(lost);
    if (more == NULL || PyObject_SetAttrString(conn, "lost", more) < 0) {
        Py_XDECREF(more);
        return -1;
    }
    Py_DECREF(more);
    return append_new(items, Py_BuildValue("(OOi)", Py_None, Py_None, 1));
}

static ssize_t recv_nowait(int fd, void *into, size_t size, int flags) {
    ssize_t n;
    Py_BEGIN_ALLOW_THREADS
    do {
        n = recv(fd, into, size, flags | MSG_DONTWAIT);
    } while (n < 0 && errno == EINTR);
    Py_END_ALLOW_THREADS
    return n;
}

static PyObject *take(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 8) {
        PyErr_SetString(PyExc_TypeError,
                        "take(fd, conn, scratch, journal, limit, until, items, opened)");
        return NULL;
    }
    long fd_long = PyLong_AsLong(args[0]);
    int fd = (int)fd_long;
    if (fd_long != fd) {
        PyErr_SetString(PyExc_OverflowError, "take: fd out of range");
        return NULL;
    }
    PyObject *conn = args[1], *items = args[6], *opened = args[7];
    long long limit = PyLong_AsLongLong(args[4]);
    unsigned long long until = PyLong_AsUnsignedLongLong(args[5]);
    if (PyErr_Occurred())
        return NULL;
    if (!PyList_Check(items) || (opened != Py_None && !PyList_Check(opened))) {
        PyErr_SetString(PyExc_TypeError, "take: items and opened must be lists");
        return NULL;
    }
    Py_buffer scratch, journal;
    if (PyObject_GetBuffer(args[2], &scratch, PyBUF_WRITABLE) < 0)
        return NULL;
    if (PyObject_GetBuffer(args[3], &journal, PyBUF_WRITABLE) < 0) {
        PyBuffer_Release(&scratch);
        return NULL;
    }
    PyObject *out = NULL;
    if (scratch.len < DATAGRAM_MAX || journal.len < FRAME_SIZE) {
        PyErr_SetString(PyExc_ValueError, "take: scratch or journal too small");
        goto done;
    }
    int urgent = opened != Py_None;
    long long n = 0;
    for (;;) {
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now); /* the kernel's clock: ktime_get_ns */
        unsigned long long now_ns = (unsigned long long)now.tv_sec * 1000000000ULL
            + (unsigned long long)now.tv_nsec;
        ssize_t size = recv_nowait(fd, scratch.buf, DATAGRAM_MAX, MSG_PEEK);
        if (size < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) {
                out = Py_BuildValue("(LK)", n, now_ns);
                goto done;
            }
            if (overrun(errno, conn, items) < 0)
                goto done;
            continue;
        }
        const char *data = scratch.buf;
        uint64_t stamp = stamp_of(data, (size_t)size);
        if ((!urgent && stamp >= until) || n >= limit
            || !journal_add(&journal, data, (size_t)size)) {
            out = Py_BuildValue("(LK)", n, (unsigned long long)stamp);
            goto done;
        }
        if (parse_into(data, (size_t)size, items, opened) < 0)
            goto done;
        n++;
        for (;;) { /* consumed: it is in the journal now */
            char sink[16];
            if (recv_nowait(fd, sink, sizeof sink, MSG_TRUNC) >= 0)
                break;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                break;
            if (overrun(errno, conn, items) < 0) /* an overrun since the peek: said first */
                goto done;
        }
    }
done:
    PyBuffer_Release(&journal);
    PyBuffer_Release(&scratch);
    return out;
}

static PyObject *configure(PyObject *self, PyObject *args) {
    PyObject *template, *username, *parse_env, *unified_cgroup, *tty_name;
    long long clk_tck, page_size;
    if (!PyArg_ParseTuple(args, "O!OOOOLL:configure", &PyDict_Type, &template, &username,
                          &parse_env, &unified_cgroup, &tty_name, &clk_tck, &page_size))
        return NULL;
    for (int k = 0; k < K_COUNT; k++) {
        int has = PyDict_Contains(template, keys[k]);
        if (has <= 0) {
            if (has == 0)
                PyErr_Format(PyExc_ValueError, "the record template has no %R", keys[k]);
            return NULL;
        }
    }
    if (clk_tck <= 0) {
        PyErr_SetString(PyExc_ValueError, "clk_tck must be positive");
        return NULL;
    }
    PyObject *clk = PyLong_FromLongLong(clk_tck), *page = PyLong_FromLongLong(page_size);
    if (clk == NULL || page == NULL) {
        Py_XDECREF(clk);
        Py_XDECREF(page);
        return NULL;
    }
    Py_INCREF(template);
    Py_INCREF(username);
    Py_INCREF(parse_env);
    Py_INCREF(unified_cgroup);
    Py_INCREF(tty_name);
    Py_XSETREF(template_, template);
    Py_XSETREF(username_, username);
    Py_XSETREF(parse_env_, parse_env);
    Py_XSETREF(unified_cgroup_, unified_cgroup);
    Py_XSETREF(tty_name_, tty_name);
    Py_XSETREF(clk_tck_, clk);
    Py_XSETREF(page_size_, page);
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"read_record", (PyCFunction)(void (*)(void))read_record, METH_FASTCALL,
     "read_record(pid, dfd, argv, stat_raw, boot_seconds, own_pid_ns) -> dict | None"},
    {"take", (PyCFunction)(void (*)(void))take, METH_FASTCALL,
     "take(fd, conn, scratch, journal, limit, until, items, opened) -> (n, stamp)"},
    {"configure", configure, METH_VARARGS,
     "configure(template, username, parse_env, unified_cgroup, tty_name, clk_tck, page_size)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "daemoneye._procread",
    "procfs.py's record read, compiled (see procfs.IMPLEMENTATION)", -1, methods,
};

PyMODINIT_FUNC PyInit__procread(void) {
    for (int k = 0; k < K_COUNT; k++) {
        keys[k] = PyUnicode_InternFromString(KEY_NAMES[k]);
        if (keys[k] == NULL)
            return NULL;
    }
    zero_ = PyLong_FromLong(0);
    thousand_ = PyLong_FromLong(1000);
    billion_ = PyLong_FromLong(1000000000L);
    if (zero_ == NULL || thousand_ == NULL || billion_ == NULL)
        return NULL;
    return PyModule_Create(&module);
}
