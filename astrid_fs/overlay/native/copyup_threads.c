/*
 * Copy-up's work off the request path, done by a C thread that never takes
 * Python's GIL (loaded with ctypes by overlay/tmpfile.py; built by
 * scripts/setup.sh).
 *
 * Why C: the same job done by a Python thread (making unnamed files ahead)
 * cost the daemon's trio thread more than it saved once the disk was quick:
 * every hand-over woke a thread that then had to win the GIL from the
 * thread answering requests (futex round trips on a 2-CPU machine).
 * Measured in docs/benchmarks.md. (A second thread wrote base content as
 * files until base content moved into one pack: overlay/basepack.py.)
 *
 * Always, or only while making a file is slow (astrid_copyup_mode: 1 or 0;
 * cthreads.py sets 1 unless ASTRID_FS_COPYUP_THREADS=adaptive). Right after
 * mass deletions (ext4 without a journal skips recently freed inodes, see
 * scripts/bench/fs_dataset.py) a file costs 0.1-2 ms, and the thread halves
 * a burst of copy-ups. On a quick disk a file costs ~10-20 us: with the
 * requests on /dev/fuse a thread beside them then took about as much CPU
 * as it saved (mode 0 was the default for that), over io_uring a copy-up
 * that makes its own file was 8-19 % slower in three A/Bs of four
 * (docs/benchmarks.md, "Copy-up's files made ahead on a quick disk too").
 * Mode 0: every making is timed
 * (the thread's own, and the copy-ups' through astrid_make_note) into one
 * moving average for the process (a daemon has one work dir); above
 * SLOW_NS the thread works, below FAST_NS it rests: take() then hands out
 * what is left.
 *
 * Unnamed files made ahead (astrid_ahead_*): a thread keeps `size`
 *    O_TMPFILE files open for one directory; take() hands one out (or -1 when
 *    none is ready: the caller makes its own). A thread that cannot make a
 *    file stops for good where the file system has none (EOPNOTSUPP, EISDIR,
 *    EINVAL) and waits where it is full (any other error) until resume().
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

/* 3: files made ahead are O_RDWR (a copy-up's file becomes the inode fd the
 * daemon reads through: overlay/core.py copy_up_open); 2 made them O_WRONLY. */
int astrid_copyup_threads_version(void) { return 3; }

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
        int fd = make_timed(a->dir, O_RDWR); /* (tmpfile.py `_make`) */
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
