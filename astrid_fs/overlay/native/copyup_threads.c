/*
 * Copy-up's work off the request path, done by C threads that never take
 * Python's GIL (loaded with ctypes by overlay/tmpfile.py and
 * overlay/basecontent.py; built by scripts/setup.sh).
 *
 * Why C: the same two jobs done by Python threads (one making unnamed files
 * ahead, one writing base content) cost the daemon's trio thread more than
 * they saved once the disk was quick: every hand-over woke a thread that
 * then had to win the GIL from the thread answering requests (futex
 * round trips on a 2-CPU machine). Measured in docs/benchmarks.md.
 *
 * Only while making a file is slow. On a quick disk a new unnamed file
 * costs ~10 us and a copy-up that makes its own files (and writes its own
 * base content) is as fast as kernel overlayfs; any thread working beside
 * the request then only takes CPU from it. Right after mass deletions
 * (ext4 without a journal skips recently freed inodes, see
 * scripts/bench/fs_dataset.py) a file costs 0.1-2 ms, and the threads
 * halve a burst of copy-ups. So every making is timed (the threads' own,
 * and the copy-ups' through astrid_make_note) into one moving average for
 * the process (a daemon has one work dir); above SLOW_NS the threads work,
 * below FAST_NS they rest: take() then hands out what is left and put()
 * lets the caller write (astrid_copyup_mode(1) keeps them on, for tests
 * and A/B runs).
 *
 * 1. Unnamed files made ahead (astrid_ahead_*): a thread keeps `size`
 *    O_TMPFILE files open for one directory; take() hands one out (or -1 when
 *    none is ready: the caller makes its own). A thread that cannot make a
 *    file stops for good where the file system has none (EOPNOTSUPP, EISDIR,
 *    EINVAL) and waits where it is full (any other error) until resume().
 *
 * 2. Base content written (astrid_base_*): put() copies the bytes into a
 *    queue (at most `limit` bytes wait; beyond that the caller writes them
 *    itself) and returns; the thread writes each as an unnamed file of the
 *    work dir, sets its mtime and links it at its path (making missing
 *    parent directories), in the order handed over. A path already queued
 *    or already there keeps its first copy. Best-effort as the Python side
 *    is: a copy that cannot be written is dropped and counted.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

int astrid_copyup_threads_version(void) { return 1; }

static int unsupported(int e) { return e == EOPNOTSUPP || e == EISDIR || e == EINVAL; }

/* ---- 0. is making a file slow? ------------------------------------------- */

#define SLOW_NS 60000 /* the threads start above this average ... */
#define FAST_NS 25000 /* ... and rest below this one */

static _Atomic long long make_ns; /* moving average (1/8 weight per sample) */
static _Atomic int slow;
static _Atomic int always; /* astrid_copyup_mode(1) */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* One file made in `ns` (by a thread here, or by a copy-up itself). */
void astrid_make_note(int64_t ns)
{
    long long avg = make_ns; /* (racing updates lose a sample: harmless) */
    avg += (ns - avg) / 8;
    make_ns = avg;
    if (avg > SLOW_NS)
        slow = 1;
    else if (avg < FAST_NS)
        slow = 0;
}

static int working(void) { return slow || always; }

/* 0: threads work only while making is slow (default); 1: always. */
void astrid_copyup_mode(int mode)
{
    always = mode == 1;
}

/* The moving average (ns) and whether the threads work. */
void astrid_make_stats(int64_t *out)
{
    out[0] = make_ns;
    out[1] = working();
}

static int make_timed(const char *dir, int flags)
{
    int64_t t = now_ns();
    int fd = open(dir, O_TMPFILE | flags | O_CLOEXEC, 0600);
    int e = errno;
    if (fd >= 0)
        astrid_make_note(now_ns() - t);
    errno = e;
    return fd;
}

static void deadline_in(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

/* ---- 1. unnamed files made ahead ---------------------------------------- */

typedef struct {
    char *dir;
    int size;
    int *ready; /* a stack of fds (any order will do) */
    int nready;
    int filling; /* the thread is awake, making */
    int stopped;
    int failed; /* errno of the last failure, 0 while making */
    int64_t taken, made_on_request, resumed;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
} ahead_t;

static void *ahead_run(void *arg)
{
    ahead_t *a = arg;
    pthread_mutex_lock(&a->lock);
    for (;;) {
        /* Refill from half empty to full (one wake-up per size/2 files
         * taken), while making is slow. */
        while (!a->stopped && (a->nready >= a->size || a->failed || !working())) {
            a->filling = 0;
            pthread_cond_wait(&a->cond, &a->lock);
        }
        if (a->stopped)
            break;
        a->filling = 1;
        pthread_mutex_unlock(&a->lock);
        int fd = make_timed(a->dir, O_WRONLY);
        int e = errno;
        pthread_mutex_lock(&a->lock);
        if (fd < 0) {
            a->failed = e ? e : EIO;
            pthread_cond_broadcast(&a->cond);
            if (unsupported(a->failed))
                break; /* for good */
            continue;  /* full: until resume() */
        }
        a->ready[a->nready++] = fd;
        pthread_cond_broadcast(&a->cond);
    }
    pthread_mutex_unlock(&a->lock);
    return NULL;
}

ahead_t *astrid_ahead_start(const char *dir, int size)
{
    ahead_t *a = calloc(1, sizeof *a);
    if (!a)
        return NULL;
    a->dir = strdup(dir);
    a->size = size > 0 ? size : 1;
    a->ready = calloc((size_t)a->size, sizeof(int));
    pthread_mutex_init(&a->lock, NULL);
    pthread_cond_init(&a->cond, NULL);
    if (!a->dir || !a->ready || pthread_create(&a->thread, NULL, ahead_run, a) != 0) {
        free(a->ready);
        free(a->dir);
        free(a);
        return NULL;
    }
    return a;
}

/* An fd made ahead (write-only, mode 0600), or -1: none ready. */
int astrid_ahead_take(ahead_t *a)
{
    pthread_mutex_lock(&a->lock);
    int fd = -1;
    if (a->nready > 0) {
        fd = a->ready[--a->nready];
        a->taken++;
    } else {
        a->made_on_request++;
    }
    /* (a wake-up costs the taker: not one per take) */
    if (!a->filling && !a->failed && a->nready <= a->size / 2 && working())
        pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    return fd;
}

/* A file was made on request: a thread stopped by a full file system makes
 * files again. */
void astrid_ahead_resume(ahead_t *a)
{
    pthread_mutex_lock(&a->lock);
    if (a->failed && !unsupported(a->failed)) {
        a->failed = 0;
        a->resumed++;
        pthread_cond_broadcast(&a->cond);
    }
    pthread_mutex_unlock(&a->lock);
}

/* 1 once `size` files wait; 0 on timeout or when the thread stopped making. */
int astrid_ahead_wait_full(ahead_t *a, int timeout_ms)
{
    struct timespec ts;
    deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&a->lock);
    int rc = 0;
    while (a->nready < a->size && !a->failed && !a->stopped)
        if ((rc = pthread_cond_timedwait(&a->cond, &a->lock, &ts)) != 0)
            break;
    int full = a->nready >= a->size && !a->failed;
    pthread_mutex_unlock(&a->lock);
    return full;
}

/* taken, made_on_request, resumed, ready, failed (errno or 0) */
void astrid_ahead_stats(ahead_t *a, int64_t *out)
{
    pthread_mutex_lock(&a->lock);
    out[0] = a->taken;
    out[1] = a->made_on_request;
    out[2] = a->resumed;
    out[3] = a->nready;
    out[4] = a->failed;
    pthread_mutex_unlock(&a->lock);
}

void astrid_ahead_stop(ahead_t *a)
{
    pthread_mutex_lock(&a->lock);
    a->stopped = 1;
    pthread_cond_broadcast(&a->cond);
    pthread_mutex_unlock(&a->lock);
    pthread_join(a->thread, NULL);
    while (a->nready > 0)
        close(a->ready[--a->nready]);
    pthread_cond_destroy(&a->cond);
    pthread_mutex_destroy(&a->lock);
    free(a->ready);
    free(a->dir);
    free(a);
}

/* ---- 2. base content written --------------------------------------------- */

#define BUCKETS 1024
#define BATCH 16     /* copies a wake-up of the writer waits for ... */
#define GATHER_MS 10 /* ... at most this long */

typedef struct item {
    struct item *next;  /* in the queue */
    struct item *chain; /* in its bucket */
    char *out;
    char *data;
    size_t len;
    int64_t mtime_ns;
    uint32_t hash;
} item_t;

typedef struct {
    char *tmp_dir;
    int64_t limit;
    item_t *head, *tail; /* queued */
    item_t *writing;     /* taken off the queue, still pending */
    item_t *bucket[BUCKETS];
    int64_t pending, pending_bytes;
    int64_t queued, written, written_inline, dropped;
    unsigned long named; /* temp names, where no unnamed files can be made */
    int stopped;
    int flushing; /* callers waiting in flush(): no gathering */
    pthread_mutex_t lock;
    pthread_cond_t cond;
    pthread_t thread;
} writer_t;

static uint32_t fnv1a(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static item_t *find_pending(writer_t *w, const char *out, uint32_t h)
{
    for (item_t *it = w->bucket[h % BUCKETS]; it; it = it->chain)
        if (it->hash == h && strcmp(it->out, out) == 0)
            return it;
    return NULL;
}

static void unchain(writer_t *w, item_t *it)
{
    item_t **p = &w->bucket[it->hash % BUCKETS];
    while (*p && *p != it)
        p = &(*p)->chain;
    if (*p)
        *p = it->chain;
}

/* mkdir -p of the directory part of `path` (which is absolute). */
static int make_parents(const char *path)
{
    char *dir = strdup(path);
    if (!dir)
        return -1;
    char *slash = strrchr(dir, '/');
    if (!slash || slash == dir) {
        free(dir);
        return 0;
    }
    *slash = '\0';
    for (char *p = dir + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                free(dir);
                return -1;
            }
            *p = c;
            if (c == '\0')
                break;
        }
    }
    free(dir);
    return 0;
}

static int write_all(int fd, const char *data, size_t len)
{
    size_t done = 0;
    while (done < len) {
        ssize_t n = pwrite(fd, data + done, len - done, (off_t)done);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        done += (size_t)n;
    }
    return 0;
}

/* Link `src` (a /proc/self/fd path, or a named temp file) at `out`, making
 * missing parents once. 0, or -1 with errno (EEXIST: a copy stands). */
static int link_at(const char *src, int follow, const char *out)
{
    int flags = follow ? AT_SYMLINK_FOLLOW : 0;
    if (linkat(AT_FDCWD, src, AT_FDCWD, out, flags) == 0)
        return 0;
    if (errno != ENOENT || make_parents(out) != 0)
        return -1;
    return linkat(AT_FDCWD, src, AT_FDCWD, out, flags);
}

/* Write one copy; 1 written, 0 a copy stood already, -1 not written. */
static int write_copy(writer_t *w, const item_t *it)
{
    char named[4096] = "";
    int fd = make_timed(w->tmp_dir, O_WRONLY);
    if (fd < 0 && unsupported(errno)) {
        snprintf(named, sizeof named, "%s/base-c-%d-%lu", w->tmp_dir, (int)getpid(), w->named++);
        fd = open(named, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    }
    if (fd < 0)
        return -1;
    int rc = -1;
    struct timespec times[2];
    times[0].tv_sec = times[1].tv_sec = it->mtime_ns / 1000000000LL;
    times[0].tv_nsec = times[1].tv_nsec = it->mtime_ns % 1000000000LL;
    if (write_all(fd, it->data, it->len) == 0 && futimens(fd, times) == 0) {
        int linked;
        if (named[0]) {
            linked = link_at(named, 0, it->out);
        } else {
            char proc[64];
            snprintf(proc, sizeof proc, "/proc/self/fd/%d", fd);
            linked = link_at(proc, 1, it->out);
        }
        rc = linked == 0 ? 1 : (errno == EEXIST ? 0 : -1);
    }
    close(fd);
    if (named[0])
        unlink(named);
    return rc;
}

static void *writer_run(void *arg)
{
    writer_t *w = arg;
    pthread_mutex_lock(&w->lock);
    for (;;) {
        while (!w->head && !w->stopped)
            pthread_cond_wait(&w->cond, &w->lock);
        if (w->head && !w->head->next && !w->stopped && !w->flushing) {
            /* One copy queued: wait a moment for a batch (put() wakes this
             * thread for the first copy and the BATCH-th, not for each). */
            struct timespec ts;
            deadline_in(&ts, GATHER_MS);
            while (w->pending < BATCH && !w->stopped && !w->flushing)
                if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0)
                    break;
        }
        item_t *it = w->head;
        if (!it)
            break; /* stopped, everything written */
        w->head = it->next;
        if (!w->head)
            w->tail = NULL;
        w->writing = it;
        pthread_mutex_unlock(&w->lock);
        int rc = write_copy(w, it);
        pthread_mutex_lock(&w->lock);
        w->writing = NULL;
        unchain(w, it);
        w->pending--;
        w->pending_bytes -= (int64_t)it->len;
        if (rc < 0)
            w->dropped++;
        else
            w->written++;
        pthread_cond_broadcast(&w->cond);
        free(it->data);
        free(it->out);
        free(it);
    }
    pthread_mutex_unlock(&w->lock);
    return NULL;
}

writer_t *astrid_base_start(const char *tmp_dir, int64_t limit)
{
    writer_t *w = calloc(1, sizeof *w);
    if (!w)
        return NULL;
    w->tmp_dir = strdup(tmp_dir);
    w->limit = limit;
    pthread_mutex_init(&w->lock, NULL);
    pthread_cond_init(&w->cond, NULL);
    if (!w->tmp_dir || pthread_create(&w->thread, NULL, writer_run, w) != 0) {
        free(w->tmp_dir);
        free(w);
        return NULL;
    }
    return w;
}

/* Queue a copy of `data` for `out`: 0 queued, 1 a copy for `out` is queued
 * already (the first stands), -1 not taken (making files is quick, or the
 * writer is stopped, full, out of memory): the caller writes it. */
int astrid_base_put(writer_t *w, const char *out, const char *data, int64_t len,
                    int64_t mtime_ns)
{
    uint32_t h = fnv1a(out);
    pthread_mutex_lock(&w->lock);
    int rc = -1;
    if (find_pending(w, out, h)) {
        rc = 1;
    } else if (!w->stopped && working() && w->pending_bytes + len <= w->limit) {
        item_t *it = calloc(1, sizeof *it);
        char *o = strdup(out);
        char *d = malloc(len > 0 ? (size_t)len : 1);
        if (it && o && d) {
            memcpy(d, data, (size_t)len);
            *it = (item_t){.out = o, .data = d, .len = (size_t)len, .mtime_ns = mtime_ns,
                           .hash = h, .chain = w->bucket[h % BUCKETS]};
            w->bucket[h % BUCKETS] = it;
            if (w->tail)
                w->tail->next = it;
            else
                w->head = it;
            w->tail = it;
            w->pending++;
            w->pending_bytes += len;
            w->queued++;
            if (w->pending == 1 || w->pending == BATCH)
                pthread_cond_broadcast(&w->cond);
            rc = 0;
        } else {
            free(it);
            free(o);
            free(d);
        }
    }
    if (rc < 0)
        w->written_inline++;
    pthread_mutex_unlock(&w->lock);
    return rc;
}

/* 1 if a copy for `out` is queued or being written. */
int astrid_base_queued(writer_t *w, const char *out)
{
    uint32_t h = fnv1a(out);
    pthread_mutex_lock(&w->lock);
    int found = find_pending(w, out, h) != NULL;
    pthread_mutex_unlock(&w->lock);
    return found;
}

/* Wait until every copy handed over so far is written: 1, or 0 on timeout
 * (timeout_ms < 0: no limit). */
int astrid_base_flush(writer_t *w, int timeout_ms)
{
    struct timespec ts;
    if (timeout_ms >= 0)
        deadline_in(&ts, timeout_ms);
    pthread_mutex_lock(&w->lock);
    w->flushing++;
    pthread_cond_broadcast(&w->cond);
    while (w->pending > 0) {
        if (timeout_ms < 0)
            pthread_cond_wait(&w->cond, &w->lock);
        else if (pthread_cond_timedwait(&w->cond, &w->lock, &ts) != 0)
            break;
    }
    int done = w->pending == 0;
    w->flushing--;
    pthread_mutex_unlock(&w->lock);
    return done;
}

/* queued, written, written_inline, dropped, pending, pending_bytes */
void astrid_base_stats(writer_t *w, int64_t *out)
{
    pthread_mutex_lock(&w->lock);
    out[0] = w->queued;
    out[1] = w->written;
    out[2] = w->written_inline;
    out[3] = w->dropped;
    out[4] = w->pending;
    out[5] = w->pending_bytes;
    pthread_mutex_unlock(&w->lock);
}

/* Write what is queued, then end the thread and free the writer. */
void astrid_base_stop(writer_t *w)
{
    pthread_mutex_lock(&w->lock);
    w->stopped = 1;
    pthread_cond_broadcast(&w->cond);
    pthread_mutex_unlock(&w->lock);
    pthread_join(w->thread, NULL);
    pthread_cond_destroy(&w->cond);
    pthread_mutex_destroy(&w->lock);
    free(w->tmp_dir);
    free(w);
}
