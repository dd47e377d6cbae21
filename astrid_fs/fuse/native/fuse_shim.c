/*
 * astrid-fs FUSE shim, loaded into the daemon with LD_PRELOAD.
 *
 * pyfuse3 (3.5) cannot ask the kernel for two things that decide warm-cache
 * speed, so this shim does, without changing what pyfuse3 itself does:
 *
 * 1. Cached directory listings. pyfuse3's opendir returns only a handle
 *    number, so it cannot set FOPEN_CACHE_DIR / FOPEN_KEEP_CACHE. The
 *    daemon encodes them in the top bits of the handle it returns; the
 *    wrapped fuse_reply_open turns them into the real flags. The daemon
 *    masks the bits off when the handle comes back.
 *
 * 2. No OPEN round trips ("no_open"). When the daemon answers OPEN with
 *    ENOSYS, the kernel stops sending OPEN/RELEASE for regular files and
 *    keeps their page cache across opens; READ, WRITE and FSYNC then carry
 *    file handle 0. pyfuse3 passes only the handle (not the inode) to
 *    those handlers, so the wrapped operation table puts the inode there:
 *    handle 0 becomes ASTRID_FH_INODE | ino. Handles from CREATE are real
 *    and untouched.
 *
 * 4. No Python for the xattrs asked about all the time: `security.capability`
 *    (by the kernel before every write(2)), `security.selinux` and
 *    `system.posix_acl_*` (by `ls -l` for every entry). The mount exposes
 *    none of them (no ACL support: permissions are the mode bits; see
 *    whiteout.py), so the shim answers in C: ENODATA for capabilities,
 *    EOPNOTSUPP for labels and ACLs (which ls(1) caches per device), and
 *    since version 31 EOPNOTSUPP to setting or removing a label or an ACL
 *    (`cp -a` and `sed -i` copy each file's ACL: a SETXATTR each).
 *
 * 3. No OPENDIR round trips ("no_opendir"), likewise: the daemon answers
 *    OPENDIR with ENOSYS, the kernel then caches listings by default
 *    (FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, checked against the directory's
 *    mtime) and READDIRPLUS / FSYNCDIR carry the inode the same way.
 *
 * 5. Sparse files and modern I/O: LSEEK (SEEK_DATA / SEEK_HOLE), FALLOCATE
 *    and COPY_FILE_RANGE, which pyfuse3 has no handlers for. The daemon
 *    registers one synchronous callback per op with
 *    astrid_fuse_set_extra_ops() before it mounts (extra_ops.py); libfuse
 *    calls op handlers on pyfuse3's trio thread, so the callback runs
 *    there, inline, and returns a result or -errno. Until callbacks are
 *    registered the ops answer ENOSYS, which makes the kernel fall back to
 *    what it did before (generic lseek, EOPNOTSUPP for fallocate, a splice
 *    copy) for the rest of the mount: exactly the behaviour without them.
 *
 * 6. FUSE passthrough (kernel 6.9+), off unless the daemon calls
 *    astrid_pt_enable() before it mounts (fuse/passthrough.py has the
 *    rules; this part only carries them out):
 *    - INIT: the reply gets FUSE_PASSTHROUGH (flags2 bit 37) and
 *      max_stack_depth. libfuse 3.14 has no API for either, so the wrapped
 *      writev() patches the reply libfuse is sending; on 3.16+ the
 *      compile-time FUSE_CAP_PASSTHROUGH path asks libfuse too.
 *    - A table ino -> {data path, backing id, live opens} kept by the daemon
 *      (astrid_pt_set and friends) lets OPEN be answered here without
 *      Python: a passthrough entry with FOPEN_PASSTHROUGH + its backing id,
 *      a daemon entry (read-only opens only) with FOPEN_KEEP_CACHE, as
 *      no_open mode would. RELEASE of those opens is answered here too.
 *    - The daemon's own OPEN / CREATE answers carry ASTRID_FH_OPEN_REPLY |
 *      ino in fh; the wrapped fuse_reply_open / fuse_reply_create turn that
 *      into the table's reply. OPEN replies are sent with fuse_reply_iov
 *      (any payload); CREATE's open part is patched in writev().
 *    - Handles the kernel holds are ASTRID_FH_INODE | ino (plus
 *      ASTRID_FH_PT_OPEN for a passthrough open, stripped before Python sees
 *      the handle), so everything else stays by-inode I/O as in no_open mode.
 *    The kernel requires every open of an inode that is open for
 *    passthrough to name the same backing, and no passthrough open while
 *    it is open for cached I/O: the live-open counts here let the daemon
 *    keep to that.
 *
 * 9. Reads and writes in C. The daemon registers every inode fd it keeps
 *    (overlay/files.py) with astrid_fd_set(), marked writable for the
 *    read-write fd on an upper file (only once the file is in the upper
 *    layer, or is an unnamed copy that only the fd reaches). A by-inode READ
 *    of a registered inode is then read here (one pread, as the daemon
 *    would) and answered without Python; a by-inode WRITE of a writable one
 *    is written here, straight from libfuse's buffer to the fd
 *    (fuse_buf_copy). The daemon takes the entry back (astrid_wf_set(ino,
 *    -1)) before it closes or replaces that fd, and before it copies a lower
 *    file up (so its readers then read the upper copy); anything not in the
 *    table (a file's first READ, which opens the fd; a lower file's first
 *    write, which copies it up; a remote file) goes to Python as before.
 *    Versions 7 and 8 held only the writable fds (astrid_wf_set).
 *
 *    Part 10 keeps such READs and WRITEs (and the xattr probes of part 4)
 *    inside C altogether: the wrapped fuse_session_receive_buf answers every request
 *    it can answer here as it arrives, and waits a moment (DRAIN_WAIT_US)
 *    for the next one before handing control back, so a stream of them costs
 *    no turn of pyfuse3's trio loop each (no epoll_ctl, no epoll_wait, no
 *    Python). Anything else is returned to pyfuse3 as it would have been;
 *    "nothing came" is returned as -EINTR, which pyfuse3 answers by waiting
 *    for the fd again. Version 18: the first DRAIN_SPIN_US of that wait
 *    poll without sleeping (below, "spinning"), so the next request of a
 *    stream finds the thread running instead of waking it.
 *
 * 14. A file's first WRITE (a lower file's copy-up; version 12) and first
 *    READ (its fd opened; 13) prepared by a daemon callback inside the drain
 *    and then answered in C (below, before drain_answerable).
 *
 * 13. FUSE_HANDLE_KILLPRIV_V2 (version 10; daemon-path mounts, when the
 *    daemon calls astrid_kp_enable() before it mounts). Without it the
 *    kernel asks GETXATTR security.capability before every write (FUSE
 *    clears SB_NOSEC, so file_remove_privs checks each time): a round trip
 *    per append. With it the superblock has SB_NOSEC, so once a write found
 *    a file without suid/sgid/caps the inode is marked S_NOSEC and later
 *    writes ask nothing until its attributes are next refreshed. In exchange
 *    the file system kills suid/sgid itself, where the kernel flags it: a
 *    WRITE with FUSE_WRITE_KILL_SUIDGID, a SETATTR with FATTR_KILL_SUIDGID (a
 *    truncate by a caller without CAP_FSETID, a chown of a non-directory).
 *    libfuse 3.14 passes neither flag on, so the wrapped
 *    fuse_session_process_buf reads it from the raw request; a WRITE
 *    answered here (part 9) kills on its fd first and drops the kernel's
 *    cached attributes; any other such request leaves its inode in a table
 *    the daemon's write and setattr handlers take from (astrid_kp_take).
 *    Version 16: passthrough mounts ask for it too (their writes reach the
 *    backing file with no WRITE to flag, but the kernel still probed before
 *    each one: backing_file_write_iter calls file_remove_privs on the FUSE
 *    file). The daemon keeps files with suid/sgid off passthrough, so their
 *    WRITEs come flagged; for a file that gains them while a passthrough
 *    open holds it, backings are registered without CAP_FSETID in the
 *    credentials the kernel writes them with, so the upper's own file
 *    system kills on write (see astrid_pt_backing_open).
 *
 * 15. FUSE over io_uring (version 15; on request): a ring per CPU, served by
 *    a thread pinned to that CPU, which answers READs, WRITEs and xattr probes
 *    from part 9's table and part 12's LOOKUPs and listings, and forwards the
 *    rest to pyfuse3 (at the end).
 *
 * 7. Read-ahead. The kernel caps a FUSE mount's read-ahead at the minimum of
 *    its default (128 KiB) and the INIT reply's max_readahead, so every
 *    sequential read reaches the daemon as 128 KiB requests. Only the bdi's
 *    sysfs file (/sys/class/bdi/MAJ:MIN/read_ahead_kb) raises it, and only
 *    after the INIT reply is processed (the reply lowers it again). The
 *    daemon names that file with astrid_fuse_set_read_ahead() between
 *    mounting and serving; the wrapped writev() writes it right after the
 *    INIT reply went (the kernel processes the reply inside that write).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <fcntl.h>
#include <pthread.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/sendfile.h>
#include <sys/stat.h>
#include <sys/xattr.h>
#include <poll.h>
#include <linux/capability.h>
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

/* Part 15 (FUSE over io_uring, at the end): what the earlier parts call. */
static int ur_wanted, ur_armed;
static volatile int ur_active;       /* the INIT reply asked for it */
static int ur_devfd = -1, ur_fwd_ev = -1, ur_epfd = -1;
static void ur_note_init(const struct fuse_buf *buf);
static void ur_patch_init(unsigned char *payload);
static void ur_start(void);
static ssize_t ur_take_reply(int fd, const struct iovec *iov, int iovcnt);
static ssize_t dev_write(int fd, const void *buf, size_t len);
static int ur_pop(struct fuse_buf *buf);
/* Set while a queue thread runs part 12 for a ring request: its reply goes to
 * that entry (lk_send) instead of /dev/fuse. */
static __thread int ur_target_set;
static ssize_t ur_target_reply(const void *buf, size_t len);
static ssize_t dev_reply(int fuse_fd, const void *buf, size_t len);
/* Parts 15 and 16: `node` appended to a forward queue (`head`, `tail`;
 * under ur_lock); FWD_TAKE (part 15) takes from its head. */
#define FWD_PUT(head, tail, node)       \
    do {                                \
        (node)->next = NULL;            \
        if (tail)                       \
            (tail)->next = (node);      \
        else                            \
            (head) = (node);            \
        (tail) = (node);                \
    } while (0)
/* Part 16 (threads reading /dev/fuse, at the end). */
static int dw_wanted, dw_armed;
static volatile int dw_active, dw_gone;
static __thread int dw_worker;       /* set in part 16's threads */
static void dw_start(void);
static int dw_pop(struct fuse_buf *buf);

#define ASTRID_FH_CACHE_DIR  (UINT64_C(1) << 63)
#define ASTRID_FH_KEEP_CACHE (UINT64_C(1) << 62)
#define ASTRID_FH_INODE      (UINT64_C(1) << 61)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *,
                                               const struct fuse_lowlevel_ops *,
                                               size_t, void *);

int astrid_fuse_shim_loaded(void) { return 36; }

/* Callbacks into the daemon (version 5). Handles arrive marked like any
 * other no_open I/O (see mark()): FH_INODE | ino, or a real handle. */
typedef int64_t (*astrid_lseek_cb)(uint64_t fh, int64_t off, int whence);
typedef int (*astrid_fallocate_cb)(uint64_t fh, int mode, int64_t off, int64_t len);
typedef int64_t (*astrid_copy_cb)(uint64_t fh_in, int64_t off_in, uint64_t fh_out,
                                  int64_t off_out, uint64_t len, int flags);
static astrid_lseek_cb lseek_cb;
static astrid_fallocate_cb fallocate_cb;
static astrid_copy_cb copy_cb;

void astrid_fuse_set_extra_ops(astrid_lseek_cb l, astrid_fallocate_cb f, astrid_copy_cb c)
{
    lseek_cb = l;
    fallocate_cb = f;
    copy_cb = c;
}

/* pyfuse3 is dlopen()ed RTLD_LOCAL by Python, so libfuse is not in the
 * global scope that RTLD_NEXT searches: ask the loaded library itself. */
/* Part 7: the sysfs file and the value to write after the INIT reply. */
static char ra_file[128];
static char ra_value[24];
static __thread int ra_armed; /* set in INIT on the thread that sends the reply */

int astrid_fuse_set_read_ahead(const char *bdi_file, unsigned kib)
{
    size_t n = strlen(bdi_file);
    if (n == 0 || n >= sizeof ra_file)
        return -EINVAL;
    memcpy(ra_file, bdi_file, n + 1);
    snprintf(ra_value, sizeof ra_value, "%u\n", kib);
    return 0;
}

static void ra_apply(void)
{
    int fd = open(ra_file, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return; /* not root, or no such bdi: the kernel's default stays */
    ssize_t ignored = write(fd, ra_value, strlen(ra_value));
    (void)ignored;
    close(fd);
}

static void *libfuse_symbol(const char *name)
{
    void *sym = NULL;
    /* pyfuse3's extension module (and so libfuse) is loaded RTLD_LOCAL,
     * where RTLD_NEXT does not look: find the loaded library by soname.
     * libfuse 3.17.1+ is libfuse3.so.4 (Debian 13), earlier ones .so.3. */
    void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);
    if (!lib)
        lib = dlopen("libfuse3.so.4", RTLD_NOW | RTLD_NOLOAD);
    if (lib)
        sym = dlvsym(lib, name, "FUSE_3.0");
    if (!sym && lib)
        sym = dlsym(lib, name); /* the default version, whatever it is */
    if (!sym)
        sym = dlsym(RTLD_NEXT, name);
    return sym;
}

/* ---- 6. passthrough ------------------------------------------------------ */

/* Kernel ABI (include/uapi/linux/fuse.h, 7.40+); Debian 12's headers predate it. */
#define PT_FUSE_INIT_EXT        (UINT32_C(1) << 30)
#define PT_FUSE_WRITEBACK_CACHE (UINT32_C(1) << 16)
#define PT_FUSE_PASSTHROUGH_HI  (UINT32_C(1) << (37 - 32)) /* in flags2 */
#define PT_FOPEN_KEEP_CACHE     (UINT32_C(1) << 1)
#define PT_FOPEN_DIRECT_IO      (UINT32_C(1) << 0)
#define PT_FOPEN_PASSTHROUGH    (UINT32_C(1) << 7)
struct pt_backing_map { int32_t fd; uint32_t flags; uint64_t padding; };
#define PT_IOC_BACKING_OPEN  _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)
struct pt_open_out { uint64_t fh; uint32_t open_flags; int32_t backing_id; };
#define PT_INIT_OUT_MIN 40 /* through max_stack_depth */

#define ASTRID_FH_PT_OPEN    (UINT64_C(1) << 60) /* held by the kernel: a passthrough open */
#define ASTRID_FH_OPEN_REPLY (UINT64_C(1) << 59) /* from the daemon: answer from the table */
/* Overlay inode numbers use bit 62 (upper-only files) and bits below 59. */
#define ASTRID_FH_INO_MASK   (~(ASTRID_FH_INODE | ASTRID_FH_PT_OPEN | ASTRID_FH_OPEN_REPLY))

enum { PT_NONE = 0, PT_DAEMON = 1, PT_PASSTHROUGH = 2 };

struct pt_entry {
    struct pt_entry *next;
    uint64_t ino;
    int32_t backing_id;  /* > 0 for PT_PASSTHROUGH */
    int32_t mode;
    int32_t stale;       /* the layers changed: only the daemon decides */
    int32_t pt_opens;    /* live passthrough opens the kernel holds */
    int32_t daemon_opens;/* live daemon-path opens */
};

#define PT_BUCKETS 4096
static struct pt_entry *pt_table[PT_BUCKETS];
static pthread_mutex_t pt_lock = PTHREAD_MUTEX_INITIALIZER;
static int pt_enabled;
static int pt_usable; /* the probe found passthrough negotiated: OPENs come */
static uint32_t pt_stack_depth = 1;
static int pt_init_armed;
static struct fuse_session *pt_session;
static int64_t pt_stats[4]; /* opens answered here: passthrough, daemon; releases here; backings */
static __thread int pt_patch_armed;
static __thread struct pt_open_out pt_patch;

/* Part 13 (see the top): state the INIT patch and the handlers share. */
#define KP_INIT_FLAG  (UINT32_C(1) << 28) /* FUSE_HANDLE_KILLPRIV_V2 (init flags) */
#define KP_WRITE_KILL (UINT32_C(1) << 2)  /* FUSE_WRITE_KILL_SUIDGID (write_flags) */
#define KP_FATTR_KILL (UINT32_C(1) << 11) /* FATTR_KILL_SUIDGID (setattr valid) */
static int kp_enabled;
static int kp_init_armed;
static __thread int kp_kills; /* the request being dispatched asks for a kill */
static __thread uint32_t kp_caller[2]; /* and its caller's gid and pid */
/* kills asked for; done here; handed to the daemon; security.capability probes */
static int64_t kp_stats[4];

static struct pt_entry **pt_slot(uint64_t ino)
{
    struct pt_entry **p = &pt_table[(ino * UINT64_C(0x9E3779B97F4A7C15)) >> 52];
    while (*p && (*p)->ino != ino)
        p = &(*p)->next;
    return p;
}

static int pt_fd(void)
{
    static int (*session_fd)(struct fuse_session *);
    if (!pt_session)
        return -1;
    if (!session_fd)
        session_fd = (int (*)(struct fuse_session *))libfuse_symbol("fuse_session_fd");
    return session_fd ? session_fd(pt_session) : -1;
}

static void pt_backing_close(int32_t id)
{
    int fd = pt_fd();
    uint32_t arg = (uint32_t)id;
    if (id > 0 && fd >= 0) {
        ioctl(fd, PT_IOC_BACKING_CLOSE, &arg);
        pt_stats[3]--;
    }
}

/* Drop an entry that no open holds (caller holds pt_lock). */
static void pt_remove(struct pt_entry **slot)
{
    struct pt_entry *e = *slot;
    *slot = e->next;
    pt_backing_close(e->backing_id);
    free(e);
}

/* Called by the daemon before it mounts: turn passthrough on. */
int astrid_pt_enable(uint32_t max_stack_depth)
{
    pt_enabled = 1;
    if (max_stack_depth >= 1 && max_stack_depth <= 2)
        pt_stack_depth = max_stack_depth;
    return 0;
}

/* 0 if the kernel accepted passthrough on this connection and we may
 * register backing files; else the errno that says why not (EPERM: not
 * negotiated or no CAP_SYS_ADMIN; ENOTTY/EINVAL: a kernel without it). */
int astrid_pt_probe(void)
{
    struct pt_backing_map map = { .fd = -1 };
    int fd = pt_fd();
    if (fd < 0)
        return ENOTCONN;
    if (ioctl(fd, PT_IOC_BACKING_OPEN, &map) >= 0)
        return EIO; /* cannot happen: fd -1 */
    if (errno != EBADF)
        return errno;
    pt_usable = 1;
    return 0;
}

/* Register `fd` as a backing file: its id (> 0) or -errno.
 *
 * The kernel keeps the caller's credentials with the backing and does every
 * passthrough read and write under them. They are taken here without
 * CAP_FSETID (dropped from this thread's effective set for the ioctl only;
 * capset acts on the calling thread), so a write to an upper file that has
 * suid or sgid makes the upper's file system clear them, as a writer
 * without CAP_FSETID would: the daemon keeps such files off passthrough,
 * but one may gain the bits while a passthrough open holds it (part 13,
 * version 16). */
int astrid_pt_backing_open(int fd)
{
    struct pt_backing_map map = { .fd = fd };
    int dev = pt_fd();
    if (dev < 0)
        return -ENOTCONN;
    struct __user_cap_header_struct hdr = { .version = _LINUX_CAPABILITY_VERSION_3 };
    struct __user_cap_data_struct caps[2], without[2];
    int dropped = 0;
    if (syscall(SYS_capget, &hdr, caps) == 0 && (caps[0].effective & (1u << CAP_FSETID))) {
        memcpy(without, caps, sizeof caps);
        without[0].effective &= ~(1u << CAP_FSETID);
        dropped = syscall(SYS_capset, &hdr, without) == 0;
    }
    int id = ioctl(dev, PT_IOC_BACKING_OPEN, &map);
    int saved = errno;
    if (dropped)
        syscall(SYS_capset, &hdr, caps);
    errno = saved;
    if (id <= 0)
        return id == 0 ? -EIO : -errno;
    pthread_mutex_lock(&pt_lock);
    pt_stats[3]++;
    pthread_mutex_unlock(&pt_lock);
    return id;
}

/* Set the data path of `ino`. A passthrough entry takes over `backing_id`
 * (closed when the entry goes); the entry's previous backing is closed if
 * it is a different one. Live-open counts are kept. While passthrough opens
 * hold the entry's backing it stays (version 26): the kernel refuses an
 * open that names another backing, or none, meanwhile, and a queue thread
 * may have given out such an open since the daemon last asked; `backing_id`
 * is then closed and -EBUSY returned (the reply reuses the live backing). */
int astrid_pt_set(uint64_t ino, int32_t mode, int32_t backing_id)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry **slot = pt_slot(ino);
    struct pt_entry *e = *slot;
    if (e && e->pt_opens > 0 && e->backing_id > 0 && e->backing_id != backing_id) {
        if (backing_id > 0)
            pt_backing_close(backing_id);
        pthread_mutex_unlock(&pt_lock);
        return -EBUSY;
    }
    if (!e) {
        e = calloc(1, sizeof *e);
        if (!e) {
            pthread_mutex_unlock(&pt_lock);
            return -ENOMEM;
        }
        e->ino = ino;
        *slot = e;
    }
    if (e->backing_id != backing_id)
        pt_backing_close(e->backing_id);
    e->mode = mode;
    e->backing_id = mode == PT_PASSTHROUGH ? backing_id : 0;
    e->stale = 0;
    pthread_mutex_unlock(&pt_lock);
    return 0;
}

/* A file the kernel just learned of (LOOKUP, READDIRPLUS) that reads go
 * to the daemon for (a lower or remote file): its first OPEN is answered
 * here too. An existing entry is left as it is. */
void astrid_pt_prime(uint64_t ino)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry **slot = pt_slot(ino);
    if (!*slot) {
        struct pt_entry *e = calloc(1, sizeof *e);
        if (e) {
            e->ino = ino;
            e->mode = PT_DAEMON;
            *slot = e;
        }
    }
    pthread_mutex_unlock(&pt_lock);
}

/* out: mode, backing id, live passthrough opens, live daemon opens, stale.
 * Returns 0, or -1 when the table has no entry for `ino`. */
int astrid_pt_query(uint64_t ino, int32_t *out)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry *e = *pt_slot(ino);
    if (e) {
        out[0] = e->mode;
        out[1] = e->backing_id;
        out[2] = e->pt_opens;
        out[3] = e->daemon_opens;
        out[4] = e->stale;
    }
    pthread_mutex_unlock(&pt_lock);
    return e ? 0 : -1;
}

/* The entry at `slot` goes, or, while opens hold it, turns stale (the daemon
 * decides its next OPENs; it goes at its last RELEASE). 1 if it stayed.
 * Caller holds pt_lock. */
static int pt_retire(struct pt_entry **slot)
{
    if ((*slot)->pt_opens || (*slot)->daemon_opens) {
        (*slot)->stale = 1;
        return 1;
    }
    pt_remove(slot);
    return 0;
}

/* `ino`'s mode changed (suid/sgid may have come or gone): its entry retires. */
void astrid_pt_reconsider(uint64_t ino)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry **slot = pt_slot(ino);
    if (*slot)
        pt_retire(slot);
    pthread_mutex_unlock(&pt_lock);
}

/* The kernel forgot `ino`: drop its entry (no open can hold it). */
void astrid_pt_forget(uint64_t ino)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry **slot = pt_slot(ino);
    if (*slot)
        pt_remove(slot);
    pthread_mutex_unlock(&pt_lock);
}

/* The layers changed behind the mount: entries no open holds go; the others
 * turn stale (the daemon answers their next OPEN) and go at their last
 * RELEASE. Returns how many stayed. */
int astrid_pt_layers_changed(void)
{
    int kept = 0;
    pthread_mutex_lock(&pt_lock);
    for (int b = 0; b < PT_BUCKETS; b++) {
        struct pt_entry **p = &pt_table[b];
        while (*p) {
            if (pt_retire(p)) {
                kept++;
                p = &(*p)->next;
            }
        }
    }
    pthread_mutex_unlock(&pt_lock);
    return kept;
}

/* Close backings no open holds until at most `keep` remain (bounds what
 * the kernel keeps open for us). Returns how many were closed. */
int astrid_pt_trim(int64_t keep)
{
    int closed = 0;
    pthread_mutex_lock(&pt_lock);
    for (int b = 0; b < PT_BUCKETS && pt_stats[3] > keep; b++) {
        struct pt_entry **p = &pt_table[b];
        while (*p && pt_stats[3] > keep) {
            if ((*p)->backing_id > 0 && !(*p)->pt_opens && !(*p)->daemon_opens) {
                pt_remove(p);
                closed++;
            } else {
                p = &(*p)->next;
            }
        }
    }
    pthread_mutex_unlock(&pt_lock);
    return closed;
}

/* The inodes with live passthrough opens, at most `max` of them, into
 * `out`; returns how many there are. */
int astrid_pt_live(uint64_t *out, int max)
{
    int n = 0;
    pthread_mutex_lock(&pt_lock);
    for (int b = 0; b < PT_BUCKETS; b++)
        for (struct pt_entry *e = pt_table[b]; e; e = e->next)
            if (e->pt_opens > 0) {
                if (n < max)
                    out[n] = e->ino;
                n++;
            }
    pthread_mutex_unlock(&pt_lock);
    return n;
}

/* out: opens answered here (passthrough, daemon path), releases answered
 * here, backing ids held. */
void astrid_pt_stats(int64_t *out)
{
    pthread_mutex_lock(&pt_lock);
    memcpy(out, pt_stats, sizeof pt_stats);
    pthread_mutex_unlock(&pt_lock);
}

/* Send an OPEN reply built here (any libfuse: fuse_reply_iov sends the
 * payload as is). */
static int pt_send_open(fuse_req_t req, uint64_t fh, uint32_t flags, int32_t backing_id)
{
    static int (*reply_iov)(fuse_req_t, const struct iovec *, int);
    if (!reply_iov)
        reply_iov = (int (*)(fuse_req_t, const struct iovec *, int))libfuse_symbol("fuse_reply_iov");
    struct pt_open_out out = { .fh = fh, .open_flags = flags, .backing_id = backing_id };
    struct iovec iov = { .iov_base = &out, .iov_len = sizeof out };
    return reply_iov ? reply_iov(req, &iov, 1) : -ENOSYS;
}

/* The reply for `ino` from its table entry (caller holds pt_lock). Counts
 * the open; pt_undo() takes it back if the reply could not be sent.
 * Passthrough where live passthrough opens hold a backing (the kernel wants
 * the same one), or where the entry says so and no daemon-path open is live
 * (the kernel refuses passthrough beside cached I/O): a queue thread may
 * have answered a reader's OPEN from the entry the daemon was replacing
 * while it decided (version 26). A writer that gets the daemon path then
 * writes through the inode's fd, which its decision copied up. */
static struct pt_open_out pt_reply_for(uint64_t ino, uint32_t daemon_flags)
{
    struct pt_open_out out = { .fh = ASTRID_FH_INODE | ino, .open_flags = daemon_flags };
    struct pt_entry *e = *pt_slot(ino);
    if (e && e->backing_id > 0
        && (e->pt_opens > 0 || (e->mode == PT_PASSTHROUGH && !e->daemon_opens))) {
        e->pt_opens++;
        out.fh |= ASTRID_FH_PT_OPEN;
        out.open_flags = PT_FOPEN_PASSTHROUGH;
        out.backing_id = e->backing_id;
    } else if (e) {
        e->daemon_opens++;
    }
    return out;
}

static void pt_undo(uint64_t fh)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry *e = *pt_slot(fh & ASTRID_FH_INO_MASK);
    if (e) {
        if (fh & ASTRID_FH_PT_OPEN)
            e->pt_opens--;
        else
            e->daemon_opens--;
    }
    pthread_mutex_unlock(&pt_lock);
}

/* Whether the table answers an OPEN of entry `e` itself (caller holds
 * pt_lock): a passthrough entry no daemon-path open holds, or a daemon-path
 * entry for a read-only open while no passthrough open holds it. */
static int pt_answers(const struct pt_entry *e, int writable)
{
    return e && !e->stale
           && ((e->mode == PT_PASSTHROUGH && e->backing_id > 0 && !e->daemon_opens)
               || (e->mode == PT_DAEMON && !writable && !e->pt_opens));
}

/* The RELEASE of handle `fh` the table gave out: one live open less. */
static void pt_released(uint64_t fh)
{
    pthread_mutex_lock(&pt_lock);
    struct pt_entry **slot = pt_slot(fh & ASTRID_FH_INO_MASK);
    struct pt_entry *e = *slot;
    if (e) {
        if (fh & ASTRID_FH_PT_OPEN) {
            if (e->pt_opens > 0)
                e->pt_opens--;
        } else if (e->daemon_opens > 0) {
            e->daemon_opens--;
        }
        if (e->stale && !e->pt_opens && !e->daemon_opens)
            pt_remove(slot);
    }
    pt_stats[2]++;
    pthread_mutex_unlock(&pt_lock);
}

/*
 * Part 6 in the drain (version 11): an OPEN the table answers and the
 * RELEASE of a handle it gave out are answered straight from the raw
 * request (the reply written to /dev/fuse here, as part 12 does), so with
 * passthrough an open(2) costs no libfuse dispatch and no turn of pyfuse3's
 * loop while requests keep coming. Check and count happen under one lock:
 * a request the table cannot answer is left for libfuse (and the daemon).
 * Kernel ABI: fuse_open_in {flags, open_flags} and fuse_release_in {fh,
 * flags, release_flags, lock_owner} after the 40-byte header; the replies
 * are fuse_out_header (16), then fuse_open_out (16) for OPEN.
 */
#define PT_OPCODE_OPEN 14
#define PT_OPCODE_RELEASE 18
/* Version 14: the daemon's open decision, called here for an OPEN the
 * table cannot answer (a first open for writing: copy-up and backing; a file
 * no lookup primed). 0: decided, the table says the reply; else the open
 * handler answers. Runs on the trio thread, synchronously. */
typedef int (*astrid_pt_open_cb)(uint64_t ino, uint32_t flags);
static astrid_pt_open_cb pt_open_cb;
static int64_t pt_open_stats[2]; /* decided by the callback; left to the handler */
static void lk_absorb_pending(void);

void astrid_pt_set_open_cb(astrid_pt_open_cb cb) { pt_open_cb = cb; }

void astrid_pt_open_stats(int64_t *out) { memcpy(out, pt_open_stats, sizeof pt_open_stats); }
struct pt_open_reply { uint32_t len; int32_t error; uint64_t unique; struct pt_open_out open; };

static int pt_drain_buf(const struct fuse_buf *buf, int fuse_fd, int may_decide)
{
    const char *mem = buf->mem;
    uint32_t len;
    memcpy(&len, mem, 4);
    if (len > buf->size || !pt_usable || fuse_fd < 0 || len < 40 + 8)
        return 0;
    uint32_t opcode;
    uint64_t unique, nodeid;
    memcpy(&opcode, mem + 4, 4);
    memcpy(&unique, mem + 8, 8);
    memcpy(&nodeid, mem + 16, 8);
    if (opcode == PT_OPCODE_RELEASE && len >= 40 + 24) {
        uint64_t fh;
        memcpy(&fh, mem + 40, 8);
        if (!(fh & ASTRID_FH_INODE))
            return 0; /* a handle of the daemon's own (CREATE without the table) */
        pt_released(fh);
        struct pt_open_reply r = { .len = 16, .unique = unique };
        (void)!dev_reply(fuse_fd, &r, 16); /* (ENOENT: interrupted; nothing waits on it) */
        return 1;
    }
    if (opcode != PT_OPCODE_OPEN)
        return 0;
    uint32_t flags;
    memcpy(&flags, mem + 40, 4);
    int writable = (flags & O_ACCMODE) != O_RDONLY || (flags & O_TRUNC);
    pthread_mutex_lock(&pt_lock);
    if (!pt_answers(*pt_slot(nodeid), writable)) {
        pthread_mutex_unlock(&pt_lock);
        /* Version 14: the daemon decides here what its open handler would
         * (copy-up, backing), then the reply is the table's, as for the
         * handler's FH_OPEN_REPLY answer (pt_reply_open). */
        if (!pt_open_cb || !may_decide)
            return 0;
        lk_absorb_pending();
        if (pt_open_cb(nodeid, flags) != 0) {
            pt_open_stats[1]++;
            return 0;
        }
        pt_open_stats[0]++;
        pthread_mutex_lock(&pt_lock);
    }
    struct pt_open_reply r = { .len = sizeof r, .unique = unique,
                               .open = pt_reply_for(nodeid, PT_FOPEN_KEEP_CACHE) };
    pt_stats[r.open.backing_id > 0 ? 0 : 1]++;
    pthread_mutex_unlock(&pt_lock);
    if (dev_reply(fuse_fd, &r, sizeof r) < 0) {
        int err = errno;
        pt_undo(r.open.fh); /* not opened (ENOENT: interrupted; else libfuse answers) */
        return err == ENOENT;
    }
    return 1;
}

static uint32_t pt_daemon_flags(const struct fuse_file_info *fi)
{
    return (fi->keep_cache ? PT_FOPEN_KEEP_CACHE : 0) | (fi->direct_io ? PT_FOPEN_DIRECT_IO : 0);
}

/* fuse_reply_open with the daemon's ASTRID_FH_OPEN_REPLY handle. */
static int pt_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    uint64_t ino = fi->fh & ASTRID_FH_INO_MASK;
    pthread_mutex_lock(&pt_lock);
    struct pt_open_out out = pt_reply_for(ino, pt_daemon_flags(fi));
    pthread_mutex_unlock(&pt_lock);
    int res = pt_send_open(req, out.fh, out.open_flags, out.backing_id);
    if (res < 0)
        pt_undo(out.fh);
    return res;
}

typedef int (*reply_create_fn)(fuse_req_t, const struct fuse_entry_param *,
                               const struct fuse_file_info *);

int fuse_reply_create(fuse_req_t req, const struct fuse_entry_param *e,
                      const struct fuse_file_info *fi)
{
    static reply_create_fn real;
    if (!real && !(real = (reply_create_fn)libfuse_symbol("fuse_reply_create")))
        return -ENOSYS;
    if (!pt_enabled || !(fi->fh & ASTRID_FH_OPEN_REPLY))
        return real(req, e, fi);
    struct fuse_file_info copy = *fi;
    pthread_mutex_lock(&pt_lock);
    struct pt_open_out out = pt_reply_for(fi->fh & ASTRID_FH_INO_MASK, 0);
    pthread_mutex_unlock(&pt_lock);
    copy.fh = out.fh;
    /* libfuse builds the entry part; writev() below fixes the open part. */
    pt_patch = out;
    pt_patch_armed = out.backing_id > 0;
    int res = real(req, e, &copy);
    pt_patch_armed = 0;
    if (res < 0)
        pt_undo(out.fh);
    return res;
}

/* Replies leave libfuse through writev() on the /dev/fuse fd. */
ssize_t writev(int fd, const struct iovec *iov, int iovcnt)
{
    static ssize_t (*real)(int, const struct iovec *, int);
    if (!real)
        real = (ssize_t (*)(int, const struct iovec *, int))dlsym(RTLD_NEXT, "writev");
    if (ra_armed) {
        /* The first reply after INIT is INIT's: send it (patched for part 6
         * if armed), then raise the read-ahead it just capped. */
        ra_armed = 0;
        ssize_t res = writev(fd, iov, iovcnt);
        ra_apply();
        return res;
    }
    if (ur_armed && iovcnt >= 2 && iovcnt <= 8 && fd == pt_fd()
        && iov[iovcnt - 1].iov_len >= 40 && iov[iovcnt - 1].iov_len <= 256) {
        /* part 15: INIT's reply asks for io_uring; the queues start once
         * the kernel has it (it processes the reply inside the write) */
        ur_armed = 0;
        unsigned char init[256];
        struct iovec c[8];
        memcpy(init, iov[iovcnt - 1].iov_base, iov[iovcnt - 1].iov_len);
        ur_patch_init(init);
        memcpy(c, iov, sizeof c[0] * (size_t)iovcnt);
        c[iovcnt - 1].iov_base = init;
        ssize_t res = writev(fd, c, iovcnt); /* parts 6 and 13 patch it too */
        if (res >= 0) {
            ur_devfd = fd;
            ur_active = 1;
            ur_start();
        }
        return res;
    }
    if (!(pt_init_armed || pt_patch_armed || kp_init_armed) || iovcnt < 2 || iovcnt > 8
        || fd != pt_fd()) {
        ssize_t taken = ur_take_reply(fd, iov, iovcnt); /* part 15: a ring request's */
        return taken >= 0 ? taken : real(fd, iov, iovcnt);
    }
    struct iovec copy[8];
    unsigned char payload[256];
    int pt_init = 0;
    const struct iovec *last = &iov[iovcnt - 1];
    memcpy(copy, iov, sizeof copy[0] * (size_t)iovcnt);
    if (kp_init_armed && last->iov_len >= 16 && last->iov_len <= sizeof payload) {
        /* part 13: fuse_init_out flags @12 */
        kp_init_armed = 0;
        memcpy(payload, last->iov_base, last->iov_len);
        uint32_t flags;
        memcpy(&flags, payload + 12, 4);
        flags |= KP_INIT_FLAG;
        memcpy(payload + 12, &flags, 4);
        copy[iovcnt - 1].iov_base = payload;
    } else if (pt_init_armed && last->iov_len >= PT_INIT_OUT_MIN
               && last->iov_len <= sizeof payload) {
        /* fuse_init_out: flags @12, flags2 @32, max_stack_depth @36 */
        pt_init_armed = 0;
        memcpy(payload, last->iov_base, last->iov_len);
        uint32_t flags, flags2;
        memcpy(&flags, payload + 12, 4);
        memcpy(&flags2, payload + 32, 4);
        flags |= PT_FUSE_INIT_EXT;
        flags &= ~PT_FUSE_WRITEBACK_CACHE; /* the kernel refuses passthrough with it */
        flags2 |= PT_FUSE_PASSTHROUGH_HI;
        if (kp_enabled)
            flags |= KP_INIT_FLAG; /* part 13 (version 16) */
        memcpy(payload + 12, &flags, 4);
        memcpy(payload + 32, &flags2, 4);
        memcpy(payload + 36, &pt_stack_depth, 4);
        copy[iovcnt - 1].iov_base = payload;
        pt_init = 1;
    } else if (pt_patch_armed && last->iov_len >= sizeof pt_patch && last->iov_len <= sizeof payload) {
        /* CREATE: fuse_entry_out then fuse_open_out, last in the message */
        pt_patch_armed = 0;
        memcpy(payload, last->iov_base, last->iov_len);
        memcpy(payload + last->iov_len - sizeof pt_patch, &pt_patch, sizeof pt_patch);
        copy[iovcnt - 1].iov_base = payload;
    }
    ssize_t res = ur_take_reply(fd, copy, iovcnt); /* (patched first: CREATE's open) */
    if (res < 0)
        res = real(fd, copy, iovcnt);
    if (pt_init && res >= 0)
        astrid_pt_probe(); /* the kernel processed INIT inside that write */
    return res;
}

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    static reply_open_fn real;
    if (!real && !(real = (reply_open_fn)libfuse_symbol("fuse_reply_open")))
        return -38; /* -ENOSYS: cannot happen once libfuse is loaded */
    /* (directory handles are small numbers: never bit 59) */
    if (pt_enabled && (fi->fh & ASTRID_FH_OPEN_REPLY))
        return pt_reply_open(req, fi);
    if (fi->fh & (ASTRID_FH_CACHE_DIR | ASTRID_FH_KEEP_CACHE)) {
        struct fuse_file_info copy = *fi;
        if (fi->fh & ASTRID_FH_CACHE_DIR)
            copy.cache_readdir = 1;
        if (fi->fh & ASTRID_FH_KEEP_CACHE)
            copy.keep_cache = 1;
        return real(req, &copy);
    }
    return real(req, fi);
}

/*
 * Part 11. Name-only READDIRPLUS entries. An entry whose nodeid is 0 tells
 * the kernel "no attributes for this one": it lists the name with d_ino and
 * d_type and creates no dentry (fs/fuse/readdir.c, fuse_direntplus_link),
 * as a plain READDIR would, so the daemon needs no lstat and keeps no node
 * for it. pyfuse3 sets nodeid and st_ino together, so the daemon marks
 * such an entry with generation ASTRID_GEN_NAME_ONLY and this wrapper
 * clears nodeid (and the timeouts) while keeping st_ino and st_mode.
 */
#define ASTRID_GEN_NAME_ONLY UINT64_MAX

int astrid_fuse_name_only_dirents(void) { return 1; }

size_t fuse_add_direntry_plus(fuse_req_t req, char *buf, size_t bufsize, const char *name,
                              const struct fuse_entry_param *e, off_t off)
{
    typedef size_t (*add_plus_fn)(fuse_req_t, char *, size_t, const char *,
                                  const struct fuse_entry_param *, off_t);
    static add_plus_fn real;
    if (!real && !(real = (add_plus_fn)libfuse_symbol("fuse_add_direntry_plus")))
        return 0;
    if (e != NULL && e->generation == ASTRID_GEN_NAME_ONLY) {
        struct fuse_entry_param copy = *e;
        copy.ino = 0;
        copy.generation = 0;
        copy.entry_timeout = copy.attr_timeout = 0;
        return real(req, buf, bufsize, name, &copy, off);
    }
    return real(req, buf, bufsize, name, e, off);
}

static int send_err(fuse_req_t req, int err);
static int have_reply_err(void);
static struct fuse_lowlevel_ops patched;
static void (*orig_init)(void *, struct fuse_conn_info *);
static void (*orig_read)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
static void (*orig_write)(fuse_req_t, fuse_ino_t, const char *, size_t, off_t,
                          struct fuse_file_info *);
static void (*orig_write_buf)(fuse_req_t, fuse_ino_t, struct fuse_bufvec *, off_t,
                              struct fuse_file_info *);
static void (*orig_fsync)(fuse_req_t, fuse_ino_t, int, struct fuse_file_info *);
static void (*orig_getxattr)(fuse_req_t, fuse_ino_t, const char *, size_t);
static void (*orig_readdirplus)(fuse_req_t, fuse_ino_t, size_t, off_t, struct fuse_file_info *);
static void (*orig_fsyncdir)(fuse_req_t, fuse_ino_t, int, struct fuse_file_info *);
static void (*orig_open)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);
static void (*orig_release)(fuse_req_t, fuse_ino_t, struct fuse_file_info *);
static void (*orig_setattr)(fuse_req_t, fuse_ino_t, struct stat *, int, struct fuse_file_info *);

static void mark(fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (fi && fi->fh == 0)
        fi->fh = ASTRID_FH_INODE | (uint64_t)ino;
    else if (fi && (fi->fh & ASTRID_FH_INODE))
        fi->fh &= ~ASTRID_FH_PT_OPEN; /* the daemon knows passthrough opens by inode */
}

/* With no_open, OPEN never reaches the daemon, so O_TRUNC must arrive as a
 * SETATTR: turn off atomic_o_trunc (libfuse enables it by default). */
static void shim_init(void *userdata, struct fuse_conn_info *conn)
{
    if (orig_init)
        orig_init(userdata, conn);
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
    if (dw_wanted && !ur_armed)
        dw_armed = 1; /* part 16: the threads start once this INIT is answered */
    if (ra_file[0])
        ra_armed = 1; /* libfuse sends the INIT reply right after this */
    if (kp_enabled && !pt_enabled)
        kp_init_armed = 1; /* part 13 (the INIT reply is patched in writev) */
    if (pt_enabled) {
#ifdef FUSE_CAP_PASSTHROUGH
        /* libfuse 3.17+: ask through the API as well (the writev() patch
         * below sets the same bits, so either way the kernel sees them).
         * libfuse sends max_backing_stack_depth + 1 (its own layer
         * included): pt_stack_depth counts that layer already. */
        if (conn->capable & FUSE_CAP_PASSTHROUGH) {
            conn->want |= FUSE_CAP_PASSTHROUGH;
            conn->max_backing_stack_depth = pt_stack_depth - 1;
        }
#endif
        conn->want &= ~FUSE_CAP_WRITEBACK_CACHE;
        pt_init_armed = 1; /* libfuse sends the INIT reply right after this */
    }
}

/* OPEN: answered here from the table when it can be; else the daemon. */
static void shim_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (pt_enabled) {
        int writable = (fi->flags & O_ACCMODE) != O_RDONLY || (fi->flags & O_TRUNC);
        int answered = 0;
        struct pt_open_out out = { 0 };
        pthread_mutex_lock(&pt_lock);
        if (pt_answers(*pt_slot(ino), writable)) {
            out = pt_reply_for(ino, PT_FOPEN_KEEP_CACHE);
            answered = 1;
            pt_stats[out.backing_id > 0 ? 0 : 1]++;
        }
        pthread_mutex_unlock(&pt_lock);
        if (answered) {
            if (pt_send_open(req, out.fh, out.open_flags, out.backing_id) < 0)
                pt_undo(out.fh);
            return;
        }
    }
    orig_open(req, ino, fi);
}

/* RELEASE of a handle the table gave out: count it down here. */
static void shim_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (pt_enabled && fi && (fi->fh & ASTRID_FH_INODE)) {
        pt_released(fi->fh);
        send_err(req, 0);
        return;
    }
    orig_release(req, ino, fi);
}

static void kp_pend(uint64_t ino);
static void kp_kill_fd(int fd, uint64_t ino);

/* SETATTR: the handle, if any, as the daemon knows it. */
static void shim_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
                         struct fuse_file_info *fi)
{
    if (fi && (fi->fh & ASTRID_FH_INODE))
        fi->fh &= ~ASTRID_FH_PT_OPEN;
    if (kp_kills) {
        kp_kills = 0;
        kp_pend(ino);
    }
    orig_setattr(req, ino, attr, to_set, fi);
}

static int rf_read(fuse_req_t req, size_t size, off_t off, const struct fuse_file_info *fi);
static struct wf_entry *lk_read_entry(uint64_t ino); /* part 12; returns a wf_get reference */
static int lk_file_known(uint64_t ino);

static void shim_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    mark(ino, fi);
    if (rf_read(req, size, off, fi))
        return;
    orig_read(req, ino, size, off, fi);
}

static void shim_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
                       off_t off, struct fuse_file_info *fi)
{
    mark(ino, fi);
    if (kp_kills) {
        kp_kills = 0;
        kp_pend(ino);
    }
    orig_write(req, ino, buf, size, off, fi);
}

/* ---- 9. reads and writes in C ---------------------------------------------- */

/* Version 9: every inode fd the daemon keeps is here (reads go to any of
 * them); `writable` says whether WRITEs may go there too. */
struct wf_entry {
    struct wf_entry *next;
    uint64_t ino;
    int fd;
    int writable;
    int owned; /* opened by the shim itself (part 12), closed by it */
    int refs;  /* reads and writes using `fd` now (wf_get) */
    int gone;  /* out of the table: the last wf_put frees it (and closes an owned fd) */
    uint64_t read_end;  /* part 18: where the last READ through it ended */
    uint64_t ahead_end; /* and how far the file was asked to be read ahead */
    uint64_t ahead_eof; /* the layer file's size when last looked at (fstat) */
    uint64_t id;        /* never reused: part 18's read-ahead opens are keyed by it */
};
static uint64_t wf_ids; /* the last entry id given (atomic) */
#define WF_BUCKETS 4096
static struct wf_entry *wf_table[WF_BUCKETS];
/* The daemon changes the table from its trio thread; the trio thread's
 * drain and the queue threads (part 15) read and write through it. The lock
 * is held only to look an entry up or change the table: a read or write takes
 * a reference (wf_get) and does its I/O with no lock held, so any number of
 * threads read and write side by side, and a first READ's new entry never
 * waits for another thread's read (version 24: the lock was held across the
 * I/O, and a queue thread's READ that waited on the disk held every other
 * thread's READ and first READ behind it). An entry taken out of the table
 * while in use is `gone`: the shim's own fd is closed by its last user; for
 * the daemon's fd, astrid_fd_set waits for its users (wf_idle), since the
 * daemon closes that fd as soon as the call returns. */
static pthread_mutex_t wf_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t wf_idle = PTHREAD_COND_INITIALIZER;
static int64_t wf_stats[4]; /* WRITEs answered here, bytes written; READs, bytes read (atomic) */

static void wf_count(int64_t *at, int64_t n) { __atomic_add_fetch(at, n, __ATOMIC_RELAXED); }

static struct wf_entry **wf_slot(uint64_t ino)
{
    struct wf_entry **p = &wf_table[(ino * UINT64_C(0x9E3779B97F4A7C15)) >> 52];
    while (*p && (*p)->ino != ino)
        p = &(*p)->next;
    return p;
}

/* wf_lock held: `ino`'s entry with a reference taken, or NULL. */
static struct wf_entry *wf_get_locked(uint64_t ino)
{
    struct wf_entry *e = *wf_slot(ino);
    if (e)
        e->refs++;
    return e;
}

static struct wf_entry *wf_get(uint64_t ino)
{
    pthread_mutex_lock(&wf_lock);
    struct wf_entry *e = wf_get_locked(ino);
    pthread_mutex_unlock(&wf_lock);
    return e;
}

/* `ino`'s entry with a reference taken if WRITEs may go to its fd, else
 * NULL (the shim's own fds are read-only). */
static struct wf_entry *wf_get_writable(uint64_t ino)
{
    pthread_mutex_lock(&wf_lock);
    struct wf_entry *e = *wf_slot(ino);
    if (e && e->writable)
        e->refs++;
    else
        e = NULL;
    pthread_mutex_unlock(&wf_lock);
    return e;
}

/* wf_lock held, `e` out of the table and unused: its end. */
static void wf_free(struct wf_entry *e)
{
    if (e->owned)
        close(e->fd);
    free(e);
}

/* Done with wf_get's entry. */
static void wf_put(struct wf_entry *e)
{
    pthread_mutex_lock(&wf_lock);
    if (--e->refs == 0 && e->gone) {
        if (e->owned)
            wf_free(e);
        else
            pthread_cond_broadcast(&wf_idle); /* astrid_fd_set frees it */
    }
    pthread_mutex_unlock(&wf_lock);
}

/* wf_lock held: take the entry at `slot` out of the table. The shim's own
 * fd is closed now or by its last user; the daemon's is not in use when this
 * returns (the lock was let go meanwhile if it was). */
static void wf_remove(struct wf_entry **slot)
{
    struct wf_entry *e = *slot;
    *slot = e->next;
    if (e->refs == 0) {
        wf_free(e);
        return;
    }
    e->gone = 1;
    if (e->owned)
        return;
    while (e->refs > 0)
        pthread_cond_wait(&wf_idle, &wf_lock);
    free(e);
}

/* `fd` >= 0: READs of `ino` are read from `fd` from now on, and WRITEs
 * written there if `writable`; `fd` < 0: both go to the daemon again (call
 * before closing the fd). When this returns no read or write uses the fd
 * it replaced. 0 or -ENOMEM. */
int astrid_fd_set(uint64_t ino, int fd, int writable)
{
    int res = 0;
    pthread_mutex_lock(&wf_lock);
    struct wf_entry **slot;
    /* (a loop: while wf_remove waited, a queue thread may have put the
     * shim's own fd there, and the daemon's replaces that too) */
    while (*(slot = wf_slot(ino)))
        wf_remove(slot);
    if (fd >= 0) {
        struct wf_entry *e = calloc(1, sizeof *e);
        if (e) {
            e->ino = ino;
            e->fd = fd;
            e->writable = writable;
            e->id = __atomic_add_fetch(&wf_ids, 1, __ATOMIC_RELAXED);
            *slot = e;
        } else {
            res = -ENOMEM;
        }
    }
    pthread_mutex_unlock(&wf_lock);
    return res;
}

/* Versions 7 and 8: a writable entry (their table held only those). */
int astrid_wf_set(uint64_t ino, int fd)
{
    return astrid_fd_set(ino, fd, 1);
}

/* out: WRITEs answered here, bytes they wrote. */
void astrid_wf_stats(int64_t *out)
{
    for (int i = 0; i < 2; i++)
        out[i] = __atomic_load_n(&wf_stats[i], __ATOMIC_RELAXED);
}

/* out: WRITEs answered here, bytes they wrote, READs answered here, bytes
 * they read. */
void astrid_fd_stats(int64_t *out)
{
    for (int i = 0; i < 4; i++)
        out[i] = __atomic_load_n(&wf_stats[i], __ATOMIC_RELAXED);
}

/* A by-inode WRITE of a registered inode: written and answered here.
 * Returns 0 when it was not (the caller hands it to the daemon). */
static ssize_t (*wf_buf_copy)(struct fuse_bufvec *, struct fuse_bufvec *,
                              enum fuse_buf_copy_flags);
static size_t (*wf_buf_size)(const struct fuse_bufvec *);
static int (*wf_reply_write)(fuse_req_t, size_t);

/* The libfuse functions a write here needs (looked up once): 1 if found. */
static int wf_ready(void)
{
    if (!wf_buf_size)
        wf_buf_size = (size_t (*)(const struct fuse_bufvec *))libfuse_symbol("fuse_buf_size");
    if (!wf_buf_copy)
        wf_buf_copy = (ssize_t (*)(struct fuse_bufvec *, struct fuse_bufvec *,
                                   enum fuse_buf_copy_flags))libfuse_symbol("fuse_buf_copy");
    if (!wf_reply_write)
        wf_reply_write = (int (*)(fuse_req_t, size_t))libfuse_symbol("fuse_reply_write");
    return wf_buf_copy && wf_buf_size && wf_reply_write;
}

static int wf_write(fuse_req_t req, struct fuse_bufvec *bufv, off_t off,
                    const struct fuse_file_info *fi)
{
    if (!fi || !(fi->fh & ASTRID_FH_INODE) || (fi->fh & ASTRID_FH_OPEN_REPLY))
        return 0;
    if (!wf_ready())
        return 0;
    struct wf_entry *e = wf_get_writable(fi->fh & ASTRID_FH_INO_MASK);
    if (!e)
        return 0;
    if (kp_kills) {
        kp_kills = 0;
        kp_kill_fd(e->fd, fi->fh & ASTRID_FH_INO_MASK);
    }
    struct fuse_bufvec dst = FUSE_BUFVEC_INIT(wf_buf_size(bufv));
    dst.buf[0].flags = FUSE_BUF_IS_FD | FUSE_BUF_FD_SEEK;
    dst.buf[0].fd = e->fd;
    dst.buf[0].pos = off;
    ssize_t res = wf_buf_copy(&dst, bufv, 0);
    if (res >= 0) {
        wf_count(&wf_stats[0], 1);
        wf_count(&wf_stats[1], res);
    }
    wf_put(e);
    if (res < 0)
        send_err(req, (int)-res);
    else
        wf_reply_write(req, (size_t)res);
    return 1;
}

/* A by-inode READ of an inode in the table: read and answered here, from
 * the fd the daemon would read (one pread, as the daemon does: short only at
 * EOF). Returns 0 when it was not (the caller hands it to the daemon).
 * Why pread into a buffer kept for the next READ, then fuse_reply_buf:
 * reading 1 GiB of page-cached lower file through a fresh mount (1 MiB
 * READs) took 490-580 ms that way, 780-1030 ms with fuse_reply_data of an
 * fd buffer (libfuse mallocs a buffer per reply) and 850-1800 ms with that
 * plus the splice-write capability (minimum of 5, three rounds, load 2). */
static int (*rf_reply_buf)(fuse_req_t, const char *, size_t);

static int rf_ready(void)
{
    if (!rf_reply_buf)
        rf_reply_buf = (int (*)(fuse_req_t, const char *, size_t))libfuse_symbol("fuse_reply_buf");
    return rf_reply_buf != NULL;
}

/*
 * Buffers the kernel copies file data into (version 35). A pread or a
 * /dev/fuse read into a buffer whose start is not 64-byte aligned took five
 * to six times as long as into an aligned one on this project's VMs (AMD
 * EPYC: the kernel's `rep movsb` copy_to_user; 1 GiB of page-cached file
 * into 1 MiB buffers at offset 16: 440-570 ms, at offset 0 or 64: 84-91 ms;
 * the source's alignment does not matter). malloc hands out large blocks at
 * offset 16 of a page, so every cold READ's pread (into a ring entry's
 * payload) and every WRITE's data (the kernel's copy into it) paid that: a
 * 1 GiB read through a fresh mount of a page-cached lower file took
 * 0.9-1.0 s, 65 % of the daemon's CPU in that one copy. al_alloc's block
 * has its byte `at` on a page boundary (where the data starts: a ring
 * payload at UR_PREFIX, a WRITE's data after its 80 bytes of headers).
 */
/* Bytes before the block's start that put its byte `at` on a page boundary. */
static size_t al_lead(size_t at) { return (4096 - at % 4096) % 4096; }

static char *al_alloc(size_t size, size_t at)
{
    void *base;
    if (posix_memalign(&base, 4096, size + al_lead(at)))
        return NULL;
    return (char *)base + al_lead(at);
}

static void al_free(char *p, size_t at)
{
    if (p)
        free(p - al_lead(at));
}

/* libfuse calls handlers on pyfuse3's one thread; per thread all the same. */
static __thread char *rf_buf;
static __thread size_t rf_room;

static int rf_grow(size_t size)
{
    if (size <= rf_room)
        return 1;
    char *grown = al_alloc(size, 0); /* (its contents need not be kept) */
    if (!grown)
        return 0;
    al_free(rf_buf, 0);
    rf_buf = grown;
    rf_room = size;
    return 1;
}

/*
 * 18. Layer files read ahead of a sequential reader (version 28). The kernel
 *     reads a FUSE file ahead of its reader by the mount's read-ahead (1 MiB:
 *     READs of up to 1 MiB, about two in flight), and each READ's pread
 *     waits for the disk unless the layer file's own read-ahead got there
 *     first. That one ramps up on the daemon's stream alone, and kept about
 *     two disk requests in flight where a reader of the file itself keeps
 *     three: a cold 1 GiB read took 1.25x native's time. Now a READ of at
 *     least RA_MIN_READ bytes that starts where the entry's previous READ
 *     ended (or at 0) has the layer file read up to ra_window bytes past it
 *     (only the part not asked before, so about one READ's worth each time,
 *     which keeps the disk busy where asking in half-window steps did not;
 *     never past the file's end). Small READs (a random reader's) and READs
 *     that do not follow the last one ask nothing. Concurrent READs of one
 *     entry may race on the fields: the worst is one range asked twice or
 *     not at all. ASTRID_FS_LAYER_READ_AHEAD_KIB sets the window (0: off).
 *
 *     Version 29: the range is read by the read-ahead thread (ra_run), by
 *     sendfile(2) to /dev/null through the layer file opened again for it
 *     (one open per entry, at most RA_SLOTS kept), so the kernel's own
 *     read-ahead of that open file sees one sequential reader. Version 28
 *     asked with POSIX_FADV_WILLNEED, whose forced read-ahead fills the page
 *     cache with single pages where the kernel's read-ahead makes large
 *     folios: the layer file was then read warm ~1.2x slower by the host's
 *     own readers, and the daemon's preads copied out of single pages (a
 *     cold 1 GiB read 1.32x native against 1.21x by the thread, same run).
 *     POSIX_FADV_WILLNEED remains where the thread cannot take the range
 *     (RA_MAX_JOBS waiting, or the file cannot be opened again).
 */
#define RA_MIN_READ (128 * 1024)
#define RA_WINDOW_DEFAULT (8u << 20)
static int64_t ra_bytes; /* bytes asked to be read ahead (atomic) */

static uint64_t ra_window(void)
{
    static int64_t window = -1;
    if (window < 0) {
        const char *env = getenv("ASTRID_FS_LAYER_READ_AHEAD_KIB");
        window = env && *env ? (int64_t)strtoull(env, NULL, 10) << 10 : RA_WINDOW_DEFAULT;
    }
    return (uint64_t)window;
}

/* The read-ahead thread's work: a range of a layer file, through a dup of
 * its read-ahead open (the same open file, so its read-ahead state). */
struct ra_job {
    struct ra_job *next;
    int fd; /* closed when done */
    uint64_t from, to;
};
#define RA_SLOTS 16   /* read-ahead opens kept (the least recently used goes) */
#define RA_MAX_JOBS 64 /* ranges waiting; beyond, POSIX_FADV_WILLNEED */
static pthread_mutex_t ra_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t ra_more = PTHREAD_COND_INITIALIZER;
static struct ra_job *ra_head, **ra_tail = &ra_head;
static int ra_jobs;         /* queued or being read */
static int ra_thread_state; /* 0 not started, 1 running, -1 could not start */
static int ra_null = -1;    /* /dev/null, where the thread's sendfile goes */
static struct {
    uint64_t id; /* the wf_entry's, 0: free */
    int fd;
    uint64_t used;
} ra_slots[RA_SLOTS];
static uint64_t ra_clock;
static int64_t ra_ways[2]; /* ranges read by the thread, asked by POSIX_FADV_WILLNEED (atomic);
                             * their sum: the read-aheads asked */

static int spawn_detached(void *(*fn)(void *), void *arg);

static void *ra_run(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&ra_lock);
    for (;;) {
        while (!ra_head)
            pthread_cond_wait(&ra_more, &ra_lock);
        struct ra_job *j = ra_head;
        if (!(ra_head = j->next))
            ra_tail = &ra_head;
        pthread_mutex_unlock(&ra_lock);
        /* (sendfile to /dev/null copies nothing: the page cache's folios go
         * through a pipe to nothing, read in by the kernel's read-ahead) */
        off_t at = (off_t)j->from;
        while ((uint64_t)at < j->to) {
            ssize_t n = sendfile(ra_null, j->fd, &at, (size_t)(j->to - (uint64_t)at));
            if (n < 0 && errno == EINTR)
                continue;
            if (n <= 0)
                break;
        }
        close(j->fd);
        free(j);
        pthread_mutex_lock(&ra_lock);
        ra_jobs--;
    }
    return NULL;
}

/* ra_lock held: a new fd of entry `e`'s read-ahead open (its slot's, made
 * if it has none), or -1. */
static int ra_open_locked(struct wf_entry *e)
{
    int at = 0;
    for (int i = 0; i < RA_SLOTS; i++) {
        if (ra_slots[i].id == e->id) {
            at = i;
            goto found;
        }
        if (ra_slots[i].used < ra_slots[at].used)
            at = i;
    }
    char path[32];
    snprintf(path, sizeof path, "/proc/self/fd/%d", e->fd);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    if (ra_slots[at].id)
        close(ra_slots[at].fd); /* (a waiting job holds its own dup) */
    ra_slots[at].id = e->id;
    ra_slots[at].fd = fd;
found:
    ra_slots[at].used = ++ra_clock;
    return fcntl(ra_slots[at].fd, F_DUPFD_CLOEXEC, 0);
}

/* Have the read-ahead thread read [from, to) of entry `e`'s layer file: 1,
 * or 0 when it cannot take it. */
static int ra_queue(struct wf_entry *e, uint64_t from, uint64_t to)
{
    struct ra_job *j = malloc(sizeof *j);
    if (!j)
        return 0;
    j->from = from;
    j->to = to;
    j->next = NULL;
    pthread_mutex_lock(&ra_lock);
    if (ra_thread_state == 0) {
        ra_null = open("/dev/null", O_WRONLY | O_CLOEXEC);
        ra_thread_state = ra_null >= 0 && spawn_detached(ra_run, NULL) == 0 ? 1 : -1;
    }
    int ok = ra_thread_state == 1 && ra_jobs < RA_MAX_JOBS && (j->fd = ra_open_locked(e)) >= 0;
    if (ok) {
        *ra_tail = j;
        ra_tail = &j->next;
        ra_jobs++;
        pthread_cond_signal(&ra_more);
    }
    pthread_mutex_unlock(&ra_lock);
    if (!ok)
        free(j);
    return ok;
}

static void ra_follow(struct wf_entry *e, uint64_t off, size_t size)
{
    uint64_t window = ra_window();
    if (size < RA_MIN_READ || window == 0)
        return;
    uint64_t end = off + size;
    uint64_t last = __atomic_exchange_n(&e->read_end, end, __ATOMIC_RELAXED);
    if (off != last && off != 0)
        return;
    uint64_t want = end + window;
    uint64_t eof = __atomic_load_n(&e->ahead_eof, __ATOMIC_RELAXED);
    if (want > eof) {
        /* not past the end of the file: nothing to read there, and the
         * bytes asked (the stats) stay bytes of the file; looked at again
         * only when the window reaches the size last seen (a growing file) */
        struct stat st;
        if (fstat(e->fd, &st) == 0 && st.st_size >= 0) {
            eof = (uint64_t)st.st_size;
            __atomic_store_n(&e->ahead_eof, eof, __ATOMIC_RELAXED);
        }
        if (want > eof)
            want = eof;
    }
    uint64_t ahead = __atomic_load_n(&e->ahead_end, __ATOMIC_RELAXED);
    uint64_t from = ahead > end ? ahead : end;
    if (from >= want)
        return;
    __atomic_store_n(&e->ahead_end, want, __ATOMIC_RELAXED);
    if (ra_queue(e, from, want)) {
        wf_count(&ra_ways[0], 1);
    } else {
        posix_fadvise(e->fd, (off_t)from, (off_t)(want - from), POSIX_FADV_WILLNEED);
        wf_count(&ra_ways[1], 1);
    }
    wf_count(&ra_bytes, (int64_t)(want - from));
}

/* out: read-aheads asked (part 18), bytes asked. */
void astrid_ra_stats(int64_t *out)
{
    out[0] = __atomic_load_n(&ra_ways[0], __ATOMIC_RELAXED)
             + __atomic_load_n(&ra_ways[1], __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&ra_bytes, __ATOMIC_RELAXED);
}

/* out (version 29): the read-ahead opens kept, ranges waiting for the
 * thread or being read by it, ranges it read, ranges asked by
 * POSIX_FADV_WILLNEED instead. */
void astrid_ra_thread_stats(int64_t *out)
{
    pthread_mutex_lock(&ra_lock);
    int64_t opens = 0;
    for (int i = 0; i < RA_SLOTS; i++)
        opens += ra_slots[i].id != 0;
    out[0] = opens;
    out[1] = ra_jobs;
    pthread_mutex_unlock(&ra_lock);
    out[2] = __atomic_load_n(&ra_ways[0], __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&ra_ways[1], __ATOMIC_RELAXED);
}

/* The reply to a READ of entry `e`: `got` bytes of this thread's buffer,
 * or errno `err` when `got` < 0; lets the entry go. */
static void rf_reply(fuse_req_t req, struct wf_entry *e, ssize_t got, int err)
{
    if (got >= 0) {
        wf_count(&wf_stats[2], 1);
        wf_count(&wf_stats[3], got);
    }
    wf_put(e);
    if (got < 0)
        send_err(req, err);
    else
        rf_reply_buf(req, rf_buf, (size_t)got);
}

/* pread of entry `e` into this thread's buffer and the reply to `req`; lets
 * the entry go. */
static void rf_answer(fuse_req_t req, struct wf_entry *e, size_t size, off_t off)
{
    ssize_t got;
    do
        got = pread(e->fd, rf_buf, size, off);
    while (got < 0 && errno == EINTR);
    rf_reply(req, e, got, got < 0 ? errno : 0);
}

/*
 * 17. READs that would wait on the disk, off the trio thread (version 27).
 *     Where part 15 does not run, the trio thread's drain answered every READ
 *     of part 9's table itself, one at a time: a READ that missed the page
 *     cache held back every other request until the disk answered (8 readers
 *     of cold files were served in turn: 4.3-4.8x native). Now the drain
 *     reads inline, as before, while no other request waits on /dev/fuse (a
 *     lone reader, grep -r: a hand-off would only add a wake-up per file; a
 *     cold sequential read measured slower with RWF_NOWAIT tried first,
 *     though within this disk's noise). When others wait, it reads with
 *     RWF_NOWAIT, which answers from the page cache or fails with EAGAIN: a READ the page cache holds (and an end-of-file
 *     short read of it) is answered inline, so a stream of cached reads
 *     costs no wake-up, and one that would wait goes to a reader thread
 *     (`astrid-read`; 8, started on the first such READ;
 *     ASTRID_FS_READ_THREADS=N, 0 turns them off;
 *     ASTRID_FS_READ_HANDOFF=always hands a lone reader's off too), chosen
 *     by inode, so one file's READs stay in order on one thread (the lower
 *     file's read-ahead sees a sequential reader) while other files' go side
 *     by side. The thread reads blocking and replies with libfuse's
 *     fuse_reply_buf, which any thread may call. The job holds its wf_get
 *     reference: the daemon's astrid_fd_set waits for it (part 9), so the fd
 *     stays open and a copy-up is not done before the read is. A file system
 *     without RWF_NOWAIT (EOPNOTSUPP: FUSE, NFS) is read inline, as before.
 */
#define RO_DEFAULT_THREADS 8
#define RO_MAX_THREADS 64
struct ro_job {
    struct ro_job *next;
    fuse_req_t req;
    struct wf_entry *e;
    size_t size;
    off_t off;
};
struct ro_queue {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct ro_job *head, **tail;
};
static struct ro_queue ro_q[RO_MAX_THREADS];
static int ro_threads = -1; /* configured; 0: off */
static int ro_started;      /* threads running (queue i is thread i's) */
static int ro_devfd = -1;   /* the session's /dev/fuse fd (the drain's) */
static int64_t ro_stats[3]; /* READs given to the threads, answered inline from the page
                             * cache, read inline though they might wait (atomic) */
static int spawn_detached(void *(*fn)(void *), void *arg);

void astrid_ro_stats(int64_t *out)
{
    for (int i = 0; i < 3; i++)
        out[i] = __atomic_load_n(&ro_stats[i], __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&ro_started, __ATOMIC_RELAXED);
}

static void *ro_thread(void *arg)
{
    struct ro_queue *q = arg;
    pthread_setname_np(pthread_self(), "astrid-read");
    for (;;) {
        pthread_mutex_lock(&q->lock);
        while (!q->head)
            pthread_cond_wait(&q->cond, &q->lock);
        struct ro_job *job = q->head;
        if (!(q->head = job->next))
            q->tail = &q->head;
        pthread_mutex_unlock(&q->lock);
        if (rf_grow(job->size)) {
            rf_answer(job->req, job->e, job->size, job->off);
        } else {
            wf_put(job->e);
            send_err(job->req, ENOMEM);
        }
        free(job);
    }
    return NULL;
}

/* Whether the pool takes READs (started on first use; trio thread only). */
static int ro_ready(void)
{
    if (ro_threads < 0) {
        const char *env = getenv("ASTRID_FS_READ_THREADS");
        long n = env ? atol(env) : RO_DEFAULT_THREADS;
        ro_threads = n < 0 ? 0 : n > RO_MAX_THREADS ? RO_MAX_THREADS : (int)n;
    }
    while (ro_started < ro_threads) {
        struct ro_queue *q = &ro_q[ro_started];
        pthread_mutex_init(&q->lock, NULL);
        pthread_cond_init(&q->cond, NULL);
        q->head = NULL;
        q->tail = &q->head;
        if (spawn_detached(ro_thread, q) != 0) {
            ro_threads = ro_started; /* (what could be had) */
            break;
        }
        __atomic_add_fetch(&ro_started, 1, __ATOMIC_RELAXED);
    }
    return ro_started > 0;
}

/* Answer a READ from the page cache, without waiting: 1 if answered (the
 * entry let go), 0 if it would wait, -1 if the file system cannot say. */
static int ro_try_cached(fuse_req_t req, struct wf_entry *e, size_t size, off_t off)
{
    size_t done = 0;
    while (done < size) {
        struct iovec iov = { rf_buf + done, size - done };
        ssize_t got = preadv2(e->fd, &iov, 1, off + (off_t)done, RWF_NOWAIT);
        if (got < 0 && errno == EINTR)
            continue;
        if (got < 0)
            return errno == EAGAIN || done ? 0 : -1;
        if (got == 0)
            break; /* end of file: all there is was cached */
        done += (size_t)got;
    }
    wf_count(&ro_stats[1], 1);
    rf_reply(req, e, (ssize_t)done, 0);
    return 1;
}

/* Whether another request waits on /dev/fuse now (always, with
 * ASTRID_FS_READ_HANDOFF=always: every READ that would wait is handed off). */
static int ro_others_waiting(void)
{
    static int always = -1;
    if (always < 0) {
        const char *env = getenv("ASTRID_FS_READ_HANDOFF");
        always = env && strcmp(env, "always") == 0;
    }
    struct pollfd p = { .fd = ro_devfd, .events = POLLIN };
    return always || ro_devfd < 0 || poll(&p, 1, 0) > 0;
}

/* Part 17: 1 if the READ was answered from the page cache or handed to a
 * reader thread (`e` let go either way), 0 to read it inline. */
static int ro_read(fuse_req_t req, struct wf_entry *e, uint64_t ino, size_t size, off_t off)
{
    /* (over io_uring, or with part 16, other threads already read side by
     * side: this part is for the trio thread's drain on /dev/fuse) */
    if (ur_active || dw_active || !ro_ready())
        return 0;
    int cached = ro_others_waiting() ? ro_try_cached(req, e, size, off) : -1;
    if (cached > 0)
        return 1;
    struct ro_job *job = cached == 0 ? malloc(sizeof *job) : NULL;
    if (!job) {
        wf_count(&ro_stats[2], 1);
        return 0;
    }
    *job = (struct ro_job){ NULL, req, e, size, off };
    struct ro_queue *q = &ro_q[ino % (uint64_t)ro_started];
    pthread_mutex_lock(&q->lock);
    *q->tail = job;
    q->tail = &job->next;
    pthread_cond_signal(&q->cond);
    pthread_mutex_unlock(&q->lock);
    wf_count(&ro_stats[0], 1);
    return 1;
}

static int rf_read(fuse_req_t req, size_t size, off_t off, const struct fuse_file_info *fi)
{
    if (!fi || !(fi->fh & ASTRID_FH_INODE) || (fi->fh & ASTRID_FH_OPEN_REPLY))
        return 0;
    if (!rf_ready() || !rf_grow(size))
        return 0;
    uint64_t ino = fi->fh & ASTRID_FH_INO_MASK;
    struct wf_entry *e = wf_get(ino);
    if (!e && !(e = lk_read_entry(ino))) /* a file part 12 found */
        return 0;
    ra_follow(e, (uint64_t)off, size);
    if (!ro_read(req, e, ino, size, off))
        rf_answer(req, e, size, off);
    return 1;
}

static void shim_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv,
                           off_t off, struct fuse_file_info *fi)
{
    mark(ino, fi);
    if (wf_write(req, bufv, off, fi))
        return;
    if (kp_kills) {
        kp_kills = 0;
        kp_pend(ino);
    }
    orig_write_buf(req, ino, bufv, off, fi);
}

static void shim_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
    mark(ino, fi);
    orig_fsync(req, ino, datasync, fi);
}

static void shim_readdirplus(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                             struct fuse_file_info *fi)
{
    mark(ino, fi);
    orig_readdirplus(req, ino, size, off, fi);
}

static void shim_fsyncdir(fuse_req_t req, fuse_ino_t ino, int datasync,
                          struct fuse_file_info *fi)
{
    mark(ino, fi);
    orig_fsyncdir(req, ino, datasync, fi);
}

/* SELinux labels and POSIX ACLs: not supported on this file system (the
 * mount exposes none; permissions are the mode bits), as the daemon says
 * (overlay.py `_check_settable`, `getxattr`). */
static int xattr_unsupported(const char *name)
{
    return strcmp(name, "security.selinux") == 0 || strncmp(name, "system.posix_acl_", 17) == 0;
}

static void shim_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    /* libfuse is not in the global scope (see libfuse_symbol): look the
     * reply function up there rather than linking it. */
    static int (*reply_err)(fuse_req_t, int);
    if (!reply_err)
        reply_err = (int (*)(fuse_req_t, int))libfuse_symbol("fuse_reply_err");
    if (reply_err && strcmp(name, "security.capability") == 0) {
        kp_stats[3]++;
        reply_err(req, ENODATA);  /* no file capabilities here */
        return;
    }
    if (reply_err && xattr_unsupported(name)) {
        /* ls(1) remembers that per device and stops asking for every entry */
        reply_err(req, EOPNOTSUPP);
        return;
    }
    orig_getxattr(req, ino, name, size);
}

/* Version 31: setting or removing one (`cp -a` and `sed -i` copy a file's
 * ACL to the new file, one SETXATTR each) is refused here too, before the
 * daemon would refuse it: it changes nothing there either. Version 34: by
 * the queue threads and the drain too (xattr_refused), not only in the op
 * table: each such request that reached the trio thread cost a turn of its
 * loop and an absorb, one per file `cp -a` copied. */
#define XR_SETXATTR 21
#define XR_REMOVEXATTR 24

/* Whether `req` (`len` bytes, fuse_in_header first) sets or removes a label
 * or an ACL. The name of a SETXATTR follows fuse_setxattr_in, 8 bytes, or 16
 * where the kernel and libfuse agreed on FUSE_SETXATTR_EXT (its padding 0):
 * each layout is taken only when the request is exactly that long (header,
 * in, name, NUL, value of the size it gives), which the other cannot be. */
static int xattr_refused(const char *req, uint32_t len, uint32_t opcode)
{
    if (opcode == XR_REMOVEXATTR) {
        const char *name = req + 40;
        size_t room = len > 40 ? len - 40 : 0, n = strnlen(name, room);
        return n + 1 == room && xattr_unsupported(name);
    }
    if (opcode != XR_SETXATTR || len < 48 + 2)
        return 0;
    uint32_t size, pad = 1;
    memcpy(&size, req + 40, 4);
    for (size_t in = 8; in <= 16; in += 8) {
        if (in == 16 && (len < 56 + 2 || (memcpy(&pad, req + 52, 4), pad != 0)))
            break;
        const char *name = req + 40 + in;
        size_t room = len - 40 - in, n = strnlen(name, room);
        if (n < room && (uint64_t)40 + in + n + 1 + size == len && xattr_unsupported(name))
            return 1;
    }
    return 0;
}
static void (*orig_setxattr)(fuse_req_t, fuse_ino_t, const char *, const char *, size_t, int);
static void (*orig_removexattr)(fuse_req_t, fuse_ino_t, const char *);

static void shim_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
                          size_t size, int flags)
{
    if (xattr_unsupported(name) && have_reply_err()) {
        send_err(req, EOPNOTSUPP); /* (the request is answered and freed either way) */
        return;
    }
    orig_setxattr(req, ino, name, value, size, flags);
}

static void shim_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
    if (xattr_unsupported(name) && have_reply_err()) {
        send_err(req, EOPNOTSUPP);
        return;
    }
    orig_removexattr(req, ino, name);
}

/* libfuse is not in the global scope (see libfuse_symbol): reply
 * functions are looked up there rather than linked. */
static int (*reply_err_fn)(fuse_req_t, int);

static int have_reply_err(void)
{
    if (!reply_err_fn)
        reply_err_fn = (int (*)(fuse_req_t, int))libfuse_symbol("fuse_reply_err");
    return reply_err_fn != NULL;
}

static int send_err(fuse_req_t req, int err)
{
    return have_reply_err() ? reply_err_fn(req, err) : -ENOSYS;
}

static void shim_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
                       struct fuse_file_info *fi)
{
    static int (*reply_lseek)(fuse_req_t, off_t);
    if (!reply_lseek)
        reply_lseek = (int (*)(fuse_req_t, off_t))libfuse_symbol("fuse_reply_lseek");
    if (!lseek_cb || !reply_lseek || !fi) {
        send_err(req, ENOSYS);
        return;
    }
    mark(ino, fi);
    int64_t res = lseek_cb(fi->fh, off, whence);
    if (res < 0)
        send_err(req, (int)-res);
    else
        reply_lseek(req, (off_t)res);
}

static void shim_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t offset,
                           off_t length, struct fuse_file_info *fi)
{
    if (!fallocate_cb || !fi) {
        send_err(req, ENOSYS);
        return;
    }
    mark(ino, fi);
    send_err(req, -fallocate_cb(fi->fh, mode, offset, length));
}

static void shim_copy_file_range(fuse_req_t req, fuse_ino_t ino_in, off_t off_in,
                                 struct fuse_file_info *fi_in, fuse_ino_t ino_out,
                                 off_t off_out, struct fuse_file_info *fi_out, size_t len,
                                 int flags)
{
    static int (*reply_write)(fuse_req_t, size_t);
    if (!reply_write)
        reply_write = (int (*)(fuse_req_t, size_t))libfuse_symbol("fuse_reply_write");
    if (!copy_cb || !reply_write || !fi_in || !fi_out) {
        send_err(req, ENOSYS);
        return;
    }
    mark(ino_in, fi_in);
    mark(ino_out, fi_out);
    int64_t res = copy_cb(fi_in->fh, off_in, fi_out->fh, off_out, len, flags);
    if (res < 0)
        send_err(req, (int)-res);
    else
        reply_write(req, (size_t)res);
}

/* Our operation table: pyfuse3's, with the wrappers above. */
/* A handler pyfuse3 set, kept as orig_<op>, with shim_<op> in its place. */
#define WRAP_OP(op)                   \
    do {                              \
        if (patched.op) {             \
            orig_##op = patched.op;   \
            patched.op = shim_##op;   \
        }                             \
    } while (0)
static void patch_ops(const struct fuse_lowlevel_ops *op, size_t op_size)
{
    memset(&patched, 0, sizeof patched);
    memcpy(&patched, op, op_size < sizeof patched ? op_size : sizeof patched);
    if (pt_enabled && patched.open && patched.release && patched.setattr) {
        orig_open = patched.open;
        patched.open = shim_open;
        orig_release = patched.release;
        patched.release = shim_release;
    }
    if ((pt_enabled || kp_enabled) && patched.setattr) {
        orig_setattr = patched.setattr;
        patched.setattr = shim_setattr;
    }
    orig_init = patched.init;
    patched.init = shim_init;
    /* (write_buf: libfuse prefers it to write when set; pyfuse3 sets it) */
    WRAP_OP(read);
    WRAP_OP(write);
    WRAP_OP(write_buf);
    WRAP_OP(fsync);
    WRAP_OP(getxattr);
    WRAP_OP(setxattr);
    WRAP_OP(removexattr);
    WRAP_OP(readdirplus);
    WRAP_OP(fsyncdir);
    /* pyfuse3 has none of these; the table is passed whole (this shim is
     * compiled against the libfuse headers of the library it wraps). */
    patched.lseek = shim_lseek;
    patched.fallocate = shim_fallocate;
    patched.copy_file_range = shim_copy_file_range;
}

#ifdef fuse_session_new
/* libfuse 3.17+: the header's fuse_session_new is a macro over an inline
 * wrapper of fuse_session_new_versioned (wrapped below); the library still
 * exports the 3.0 function, which programs built against older headers
 * call. Define that one. */
#undef fuse_session_new
struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata);
#endif
struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    session_new_fn real = (session_new_fn)libfuse_symbol("fuse_session_new");
    if (!real)
        return NULL;
    patch_ops(op, op_size);
    pt_session = real(args, &patched, sizeof patched, userdata);
    return pt_session;
}

#if FUSE_MAJOR_VERSION * 100 + FUSE_MINOR_VERSION >= 317
/* libfuse 3.17+: fuse_session_new() is a header wrapper around this
 * exported function, so a pyfuse3 built against those headers calls this
 * one (Debian 13: run by its suite in a trixie chroot, 2026-12-02). */
struct fuse_session *fuse_session_new_versioned(struct fuse_args *args,
                                                const struct fuse_lowlevel_ops *op,
                                                size_t op_size,
                                                struct libfuse_version *version,
                                                void *userdata)
{
    typedef struct fuse_session *(*versioned_fn)(struct fuse_args *,
                                                 const struct fuse_lowlevel_ops *, size_t,
                                                 struct libfuse_version *, void *);
    versioned_fn real = (versioned_fn)libfuse_symbol("fuse_session_new_versioned");
    if (!real)
        return NULL;
    patch_ops(op, op_size);
    pt_session = real(args, &patched, sizeof patched, version, userdata);
    return pt_session;
}
#endif

/*
 * 13. FUSE_HANDLE_KILLPRIV_V2 (see the top). Kernel ABI: fuse_in_header
 *     (40 bytes: len, opcode, ...), then fuse_write_in (write_flags @20) or
 *     fuse_setattr_in (valid @0).
 */
#define KP_OP_SETATTR 4
#define KP_OP_WRITE 16
static pthread_mutex_t kp_lock = PTHREAD_MUTEX_INITIALIZER;
struct kp_pending { uint64_t ino; uint32_t caller[2]; };
static struct kp_pending *kp_pending; /* inodes whose daemon handler must kill */
static size_t kp_npending, kp_room;

/* Called by the daemon before it mounts (daemon-path mounts only). */
int astrid_kp_enable(void)
{
    kp_enabled = 1;
    return 0;
}

void astrid_kp_stats(int64_t *out)
{
    memcpy(out, kp_stats, sizeof kp_stats);
}

/* Does the raw request `buf` ask the file system to kill suid/sgid? */
static int kp_asks(const struct fuse_buf *buf)
{
    if (!kp_enabled || (buf->flags & FUSE_BUF_IS_FD) || buf->size < 40 + 24)
        return 0;
    const char *mem = buf->mem;
    uint32_t opcode, word;
    memcpy(&opcode, mem + 4, 4);
    if (opcode == KP_OP_WRITE)
        memcpy(&word, mem + 40 + 20, 4);
    else if (opcode == KP_OP_SETATTR)
        memcpy(&word, mem + 40, 4);
    else
        return 0;
    int asks = (word & (opcode == KP_OP_WRITE ? KP_WRITE_KILL : KP_FATTR_KILL)) != 0;
    if (asks) {
        kp_stats[0]++;
        memcpy(kp_caller, mem + 28, 8); /* fuse_in_header: gid @28, pid @32 */
    }
    return asks;
}

/* The daemon's handler for `ino` must kill (its request was flagged). The
 * kernel holds the inode's lock across such a WRITE or SETATTR, so an inode
 * is here at most once; the table grows rather than lose a kill. */
static void kp_pend(uint64_t ino)
{
    pthread_mutex_lock(&kp_lock);
    if (kp_npending == kp_room) {
        size_t room = kp_room ? 2 * kp_room : 16;
        struct kp_pending *grown = realloc(kp_pending, room * sizeof *grown);
        if (grown) {
            kp_pending = grown;
            kp_room = room;
        }
    }
    if (kp_npending < kp_room) {
        kp_pending[kp_npending].ino = ino;
        memcpy(kp_pending[kp_npending].caller, kp_caller, sizeof kp_caller);
        kp_npending++;
        kp_stats[2]++;
    }
    pthread_mutex_unlock(&kp_lock);
}

/* 1 if a request for `ino` asked for a kill the daemon has not done yet
 * (taken: the daemon then kills once its write or setattr is done); its
 * caller's gid and pid in `caller`. */
int astrid_kp_take(uint64_t ino, uint32_t *caller)
{
    int found = 0;
    pthread_mutex_lock(&kp_lock);
    for (size_t i = 0; i < kp_npending; i++)
        if (kp_pending[i].ino == ino) {
            memcpy(caller, kp_pending[i].caller, sizeof kp_pending[i].caller);
            kp_pending[i] = kp_pending[--kp_npending];
            found = 1;
            break;
        }
    pthread_mutex_unlock(&kp_lock);
    return found;
}

/* Drop the kernel's cached attributes of `ino` (not its pages): after a kill
 * the daemon did outside a reply that carries attributes. Safe inside a
 * request: the kernel takes no inode lock for it. 0 or -errno. */
int astrid_kp_inval(uint64_t ino)
{
    static int (*notify)(struct fuse_session *, fuse_ino_t, off_t, off_t);
    if (!notify)
        notify = (int (*)(struct fuse_session *, fuse_ino_t, off_t, off_t))
            libfuse_symbol("fuse_lowlevel_notify_inval_inode");
    if (!notify || !pt_session)
        return -ENOSYS;
    return notify(pt_session, ino, -1, 0);
}

/* Is process `pid` (fs gid `caller_gid`) in group `gid`? Its supplementary
 * groups from /proc (a process already gone: no). */
static int kp_in_group(uint32_t pid, uint32_t caller_gid, uint32_t gid)
{
    if (caller_gid == gid)
        return 1;
    char path[32], line[512];
    snprintf(path, sizeof path, "/proc/%u/status", pid);
    FILE *f = fopen(path, "re");
    if (!f)
        return 0;
    int found = 0;
    while (!found && fgets(line, sizeof line, f))
        if (strncmp(line, "Groups:", 7) == 0) {
            char *p = line + 7, *end;
            for (unsigned long g = strtoul(p, &end, 10); end != p;
                 p = end, g = strtoul(p, &end, 10))
                if (g == gid) {
                    found = 1;
                    break;
                }
            break;
        }
    fclose(f);
    return found;
}

/* What the kernel does to a file's mode when its writer may not keep
 * privileges (setattr_should_drop_suidgid): suid goes; sgid goes if the
 * group may execute, or if the writer is not in the file's group. */
static mode_t kp_killed(mode_t mode, uint32_t file_gid)
{
    mode &= ~(mode_t)S_ISUID;
    if ((mode & S_ISGID)
        && ((mode & S_IXGRP) || !kp_in_group(kp_caller[1], kp_caller[0], file_gid)))
        mode &= ~(mode_t)S_ISGID;
    return mode;
}

/* A flagged WRITE answered here: kill on the upper file's fd first. */
static void kp_kill_fd(int fd, uint64_t ino)
{
    struct stat st;
    if (fstat(fd, &st) < 0)
        return;
    mode_t mode = kp_killed(st.st_mode, st.st_gid);
    if (mode != st.st_mode && fchmod(fd, mode & 07777) == 0) {
        kp_stats[1]++;
        astrid_kp_inval(ino);
    }
}

/*
 * 8. O_TMPFILE. The kernel sends open(dir, O_TMPFILE) as FUSE_TMPFILE
 *    (opcode 51), a request laid out exactly as FUSE_CREATE (create_in,
 *    then the name, which for a tmpfile dentry is "/") and answered exactly
 *    as CREATE (entry_out + open_out). libfuse 3.14 has no handler for it,
 *    so it would answer ENOSYS and the kernel would say EOPNOTSUPP for the
 *    rest of the mount. Once the daemon says it understands (astrid_fuse_
 *    enable_tmpfile, before it mounts), the wrapped fuse_session_process_buf
 *    renames the opcode to CREATE; the daemon's create sees the name "/",
 *    which no real entry can have, and makes an unnamed upper file
 *    (overlay/namespace.py, Namespace.tmpfile). A later linkat(fd, "",
 *    AT_EMPTY_PATH) arrives as an ordinary LINK of that inode.
 */
#define ASTRID_FUSE_TMPFILE 51
#define ASTRID_FUSE_CREATE 35

static volatile int tmpfile_on;

void astrid_fuse_enable_tmpfile(void) { tmpfile_on = 1; }

typedef void (*process_buf_fn)(struct fuse_session *, const struct fuse_buf *);

void fuse_session_process_buf(struct fuse_session *se, const struct fuse_buf *buf)
{
    static process_buf_fn real;
    if (!real)
        real = (process_buf_fn)libfuse_symbol("fuse_session_process_buf");
    kp_kills = kp_asks(buf);
    ur_note_init(buf);
    if (tmpfile_on && !(buf->flags & FUSE_BUF_IS_FD) && buf->size >= 8) {
        /* struct fuse_in_header: uint32_t len, then uint32_t opcode. */
        uint32_t opcode;
        memcpy(&opcode, (char *)buf->mem + 4, sizeof opcode);
        if (opcode == ASTRID_FUSE_TMPFILE) {
            opcode = ASTRID_FUSE_CREATE;
            memcpy((char *)buf->mem + 4, &opcode, sizeof opcode);
        }
    }
    real(se, buf);
    kp_kills = 0;
}

/*
 * 10. Draining what C answers (see part 9). Only requests whose answer here
 *     is certain are drained: GETXATTR of the names shim_getxattr answers,
 *     by-inode READs of inodes in the fd table and WRITEs of writable ones
 *     (the table cannot change meanwhile: only the daemon's trio thread
 *     changes it, and that thread is here). Kernel ABI: struct
 *     fuse_in_header (40 bytes: len, opcode, unique, nodeid, uid, gid, pid,
 *     extlen, padding), then fuse_getxattr_in (8 bytes) and the name, or
 *     fuse_write_in / fuse_read_in (40 bytes each: fh, offset, size,
 *     write_flags / read_flags, lock_owner, flags, padding).
 */
#include <poll.h>
#include <time.h>
#define DRAIN_GETXATTR 22
#define DRAIN_WRITE 16
#define DRAIN_READ 15
/* FUSE_IOCTL (version 21). The daemon implements no ioctl, so libfuse
 * answered ENOSYS (the kernel turns it into ENOTTY) after a turn of pyfuse3's
 * loop, and over io_uring after a forward to the trio thread. Every Python
 * open() with default buffering asks (isatty: TCGETS), once per file: it is
 * answered ENOTTY here, on /dev/fuse and on the rings alike. */
#define DRAIN_IOCTL 39
#define DRAIN_IN_HEADER 40
/* How long to wait for the next request before returning to pyfuse3: about
 * one client round trip (a process appending to many files sends GETXATTR,
 * WRITE, then the next file's GETXATTR within ~20-50 us); short enough that
 * the trio tasks it delays (a control request, a finished worker thread)
 * never notice. */
#define DRAIN_WAIT_US 200
/* Spinning (version 18). A request that arrives while this thread sleeps
 * costs the wake-up of an idle CPU, which on a VM whose idle vCPUs halt
 * (this project's machines: haltpoll without polling) is ~30 us, as much as
 * the rest of a round trip answered in C. So the wait above first polls
 * without sleeping for up to DRAIN_SPIN_US: measured on 1,000 appends, 500
 * after a 20,000-file grep's GETATTRs, a stat walk, a cold grep (interleaved,
 * docs/benchmarks.md), 60 us cut appends and GETATTR streams about 3x, 30 us
 * about 2x, 120 us no more than 60. It costs CPU only right after a request
 * answered here, and stops after DRAIN_SPIN_MISSES spins in a row found
 * nothing (a client whose requests come further apart): it resumes once a
 * request arrives within DRAIN_SPIN_US of a sleeping wait's start.
 * `ASTRID_FS_DRAIN_SPIN_US` sets the time (0: never spin). */
#define DRAIN_SPIN_US 60
#define DRAIN_SPIN_MISSES 8
/* requests answered while draining, returns with -EINTR; spins that found
 * the next request, spins that did not */
static int64_t drain_stats[4];
static volatile int drain_on;
static long drain_spin_us = -1;
static int drain_spin_misses;

void astrid_drain_enable(int on) { drain_on = on; }

void astrid_drain_stats(int64_t *out)
{
    memcpy(out, drain_stats, sizeof drain_stats);
}

#if defined(__x86_64__) || defined(__i386__)
#define drain_relax() __builtin_ia32_pause()
#elif defined(__aarch64__)
#define drain_relax() __asm__ __volatile__("yield")
#else
#define drain_relax() ((void)0)
#endif

static long drain_us_since(const struct timespec *t0)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (t.tv_sec - t0->tv_sec) * 1000000L + (t.tv_nsec - t0->tv_nsec) / 1000;
}

/* ppoll for the drain's next request: spinning first (above), then asleep
 * until DRAIN_WAIT_US. */
static int drain_wait(struct pollfd *p, nfds_t n)
{
    if (drain_spin_us < 0) {
        const char *env = getenv("ASTRID_FS_DRAIN_SPIN_US");
        drain_spin_us = env ? atol(env) : DRAIN_SPIN_US;
        if (drain_spin_us < 0 || drain_spin_us > DRAIN_WAIT_US)
            drain_spin_us = DRAIN_SPIN_US;
    }
    struct timespec wait = { 0, DRAIN_WAIT_US * 1000L };
    if (!drain_spin_us)
        return ppoll(p, n, &wait, NULL);
    struct timespec t0, zero = { 0, 0 };
    clock_gettime(CLOCK_MONOTONIC, &t0);
    if (drain_spin_misses < DRAIN_SPIN_MISSES) {
        do {
            int got = ppoll(p, n, &zero, NULL);
            if (got != 0) {
                drain_spin_misses = 0;
                drain_stats[2]++;
                return got;
            }
            drain_relax();
        } while (drain_us_since(&t0) < drain_spin_us);
        drain_spin_misses++;
        drain_stats[3]++;
    }
    int got = ppoll(p, n, &wait, NULL);
    if (got > 0 && drain_us_since(&t0) < drain_spin_us)
        drain_spin_misses = 0; /* requests close together again */
    return got;
}

/*
 * 14. A file's first WRITE (version 12) and first READ (13) without a turn
 *     of pyfuse3's loop.
 *     A by-inode WRITE of an inode with no writable fd in part 9's table is
 *     a lower file's first write (it copies the file up) or an upper file's
 *     whose fd went (the fd LRU). The daemon registers a callback
 *     (astrid_cu_set) that prepares such an inode, synchronously, on the
 *     trio thread, inside the drain: the copy-up, the read-write fd put in
 *     part 9's table, exactly what its write handler does first. The WRITE is
 *     then answered here like any other (its suid/sgid kill, part 13,
 *     included). The callback returns 0 when the inode is ready and anything
 *     else to leave the request to the write handler (a remote file, whose
 *     fetch must not block the loop; any error, which the handler reports).
 *     The daemon counts what the shim answered before its callback runs
 *     (part 12's absorb), as before any request Python sees.
 *     Version 13: a by-inode READ of an inode with no fd in the table (a
 *     file part 12 did not find: one in a directory with upper entries, an
 *     upper file, a file whose fd the LRU closed) is prepared the same way:
 *     the callback opens the inode's fd (`inode_fd(node, write=False)`, as
 *     the read handler does) and the shim reads.
 */
typedef int (*astrid_cu_cb)(uint64_t ino, int write);
static astrid_cu_cb cu_cb;
static int64_t cu_stats[4]; /* inodes prepared for a WRITE answered here, WRITEs left to
                              * Python; the same for READs (version 13) */
static void lk_absorb_pending(void);

void astrid_cu_set(astrid_cu_cb cb) { cu_cb = cb; }

void astrid_cu_stats(int64_t *out) { memcpy(out, cu_stats, sizeof cu_stats); }

static int cu_prepare(uint64_t ino, int write)
{
    if (!cu_cb)
        return 0;
    lk_absorb_pending();
    int ready = cu_cb(ino, write) == 0;
    if (ready) {
        pthread_mutex_lock(&wf_lock);
        struct wf_entry *e = *wf_slot(ino);
        ready = e != NULL && (e->writable || !write);
        pthread_mutex_unlock(&wf_lock);
    }
    cu_stats[(write ? 0 : 2) + (ready ? 0 : 1)]++;
    return ready;
}

static int drain_answerable(const struct fuse_buf *buf)
{
    if (buf->flags & FUSE_BUF_IS_FD || buf->size < DRAIN_IN_HEADER + 8)
        return 0;
    const char *mem = buf->mem;
    uint32_t len, opcode;
    uint64_t nodeid;
    memcpy(&len, mem, 4);
    memcpy(&opcode, mem + 4, 4);
    memcpy(&nodeid, mem + 16, 8);
    if (len > buf->size || len < DRAIN_IN_HEADER + 8)
        return 0;
    if (xattr_refused(mem, len, opcode))
        return (opcode == XR_SETXATTR ? orig_setxattr != NULL : orig_removexattr != NULL)
               && have_reply_err(); /* (shim_setxattr / shim_removexattr refuse it) */
    if (opcode == DRAIN_GETXATTR && orig_getxattr) {
        const char *name = mem + DRAIN_IN_HEADER + 8;
        size_t room = len - DRAIN_IN_HEADER - 8;
        if (!memchr(name, 0, room))
            return 0;
        return strcmp(name, "security.capability") == 0 || xattr_unsupported(name);
    }
    /* WRITE and READ: fuse_write_in / fuse_read_in start with fh (40 bytes). */
    int writing = opcode == DRAIN_WRITE && orig_write_buf && wf_ready();
    int reading = opcode == DRAIN_READ && orig_read && rf_ready();
    if ((writing || reading) && len >= DRAIN_IN_HEADER + 40) {
        uint64_t fh;
        memcpy(&fh, mem + DRAIN_IN_HEADER, 8);
        if (fh != 0 && (!(fh & ASTRID_FH_INODE) || (fh & ASTRID_FH_OPEN_REPLY)))
            return 0;
        uint64_t ino = fh ? (fh & ASTRID_FH_INO_MASK) : nodeid;
        pthread_mutex_lock(&wf_lock);
        struct wf_entry *e = *wf_slot(ino);
        int known = e != NULL && (reading || e->writable);
        pthread_mutex_unlock(&wf_lock);
        if (known || (reading && lk_file_known(ino)))
            return 1;
        return cu_prepare(ino, writing); /* part 14 */
    }
    return 0;
}

static int lk_try(const struct fuse_buf *buf, int fuse_fd); /* part 12 */
static int sa_try(const struct fuse_buf *buf, int fuse_fd); /* part 20 */
static int sa_getattr(uint64_t unique, uint64_t nodeid, int fuse_fd); /* part 20 */
static int cf_try(const struct fuse_buf *buf, int fuse_fd); /* part 21 */
static int cr_try(const struct fuse_buf *buf, int fuse_fd); /* part 22 */
static int rl_try(const struct fuse_buf *buf, int fuse_fd); /* part 22 */
static void lk_absorb_pending(void);
static void lk_absorb_asked(void);
static void lk_forgotten(const struct fuse_buf *buf);

typedef int (*receive_buf_fn)(struct fuse_session *, struct fuse_buf *);

/* An IOCTL: answered ENOTTY (above, DRAIN_IOCTL). */
static int drain_ioctl(const struct fuse_buf *buf, int fuse_fd)
{
    if ((buf->flags & FUSE_BUF_IS_FD) || buf->size < DRAIN_IN_HEADER)
        return 0;
    uint32_t opcode;
    uint64_t unique;
    memcpy(&opcode, (const char *)buf->mem + 4, 4);
    memcpy(&unique, (const char *)buf->mem + 8, 8);
    if (opcode != DRAIN_IOCTL)
        return 0;
    struct { uint32_t len; int32_t error; uint64_t unique; } r = { 16, -ENOTTY, unique };
    return dev_write(fuse_fd, &r, sizeof r) >= 0 || errno == ENOENT;
}

int fuse_session_receive_buf(struct fuse_session *se, struct fuse_buf *buf)
{
    static receive_buf_fn real;
    static process_buf_fn process;
    static int (*session_fd)(struct fuse_session *);
    if (!real) {
        real = (receive_buf_fn)libfuse_symbol("fuse_session_receive_buf");
        process = (process_buf_fn)libfuse_symbol("fuse_session_process_buf");
        session_fd = (int (*)(struct fuse_session *))libfuse_symbol("fuse_session_fd");
    }
    if (!real)
        return -ENOSYS;
    if (dw_armed) {
        dw_armed = 0; /* (INIT was answered: libfuse answers it before it asks again) */
        dw_start();
    }
    /* part 15 or 16: forwarded from a ring or a reading thread first */
    int res = ur_active ? ur_pop(buf) : dw_active ? dw_pop(buf) : 0;
    if (!res && dw_active && !dw_gone) {
        lk_absorb_asked(); /* part 16 reads /dev/fuse; this thread never does */
        return -EINTR;
    }
    if (!res && ur_active) {
        /* pyfuse3 woke for the eventfd, or /dev/fuse (FORGET, INTERRUPT;
         * an error once unmounted, which libfuse must see to end the loop) */
        struct pollfd d = { .fd = ur_devfd, .events = POLLIN };
        if (poll(&d, 1, 0) <= 0) {
            lk_absorb_asked(); /* part 12: a queue thread may have asked */
            return -EINTR;
        }
    }
    if (!res)
        res = real(se, buf);
    if (!process || !session_fd)
        return res;
    if (ro_devfd < 0)
        ro_devfd = session_fd(se); /* part 17 looks for more requests there */
    for (;;) {
        if (res <= 0)
            return res;
        if (lk_try(buf, session_fd(se))) {
            /* part 12: answered here */
        } else if (sa_try(buf, session_fd(se))) {
            drain_stats[0]++; /* part 20 */
        } else if (cf_try(buf, session_fd(se))) {
            drain_stats[0]++; /* part 21 */
        } else if (cr_try(buf, session_fd(se)) || rl_try(buf, session_fd(se))) {
            drain_stats[0]++; /* part 22 */
        } else if (drain_ioctl(buf, session_fd(se))) {
            drain_stats[0]++;
        } else if (pt_enabled && !(buf->flags & FUSE_BUF_IS_FD) && buf->size >= 40
                   && pt_drain_buf(buf, session_fd(se), 1)) {
            drain_stats[0]++; /* part 6: an OPEN or RELEASE from the table */
        } else if (drain_on && drain_answerable(buf)) {
            fuse_session_process_buf(se, buf); /* (ours: part 8's opcode rename first) */
            drain_stats[0]++;
        } else {
            lk_absorb_pending(); /* part 12: Python sees a whole inode table */
            lk_forgotten(buf);
            return res;
        }
        struct pollfd p[2] = { { .fd = dw_active ? -1 : session_fd(se), .events = POLLIN },
                               { .fd = ur_fwd_ev, .events = POLLIN } };
        if (drain_wait(p, ur_active || dw_active ? 2 : 1) <= 0) {
            drain_stats[1]++;
            return -EINTR; /* pyfuse3: wait for the fd again */
        }
        res = ur_active ? ur_pop(buf) : dw_active ? dw_pop(buf) : 0;
        if (!res && !p[0].revents) {
            drain_stats[1]++;
            return -EINTR;
        }
        if (!res)
            res = real(se, buf);
    }
    return res;
}

/*
 * 12. LOOKUPs answered in C, in directories only the local lower layer shows.
 *     In such a directory (no upper directory, one local lower layer, no
 *     remote tree: overlay/core.py `lower_only`) a child is what one lstat
 *     of its lower entry says, and its overlay inode number is the lower
 *     one tagged by device (overlay/inodes.py). The daemon names those
 *     directories here (astrid_lk_dir: inode -> lower path relative to the
 *     lower root) and the devices it has tagged (astrid_lk_dev); the wrapped
 *     fuse_session_receive_buf then answers a LOOKUP in one of them itself:
 *     lstat of its lower path, and the entry (or a negative entry) written to /dev/fuse,
 *     with the lower TTL, exactly what the daemon's fast path would send.
 *     A directory found so is named here at once (its own children follow
 *     in the same burst). Anything else (a hard-linked file, an untagged
 *     device, an errno other than ENOENT, a name too long) goes to the
 *     daemon unchanged.
 *     The daemon must count every lookup it did not see: each answered
 *     entry is queued (parent, inode, type, name), and the queue is handed
 *     to the daemon's absorb callback before any request goes to pyfuse3,
 *     so the daemon's inode table is whole whenever Python runs a request.
 *     (Its own trio tasks, the control socket, absorb first themselves.)
 *     The trio thread runs this and, over io_uring (part 15), the queue
 *     threads too: the tables are under lk_lock (let go for a LOOKUP's or
 *     GETATTR's lstat, version 19; lk_gen tells what changed meanwhile).
 *     Kernel ABI: fuse_in_header (40 bytes) then the name; the reply is
 *     fuse_out_header (16) + fuse_entry_out (40 + fuse_attr 88).
 *     Version 17: a GETATTR of a directory named here or of a file found
 *     here (below) is answered the same way, from one lstat of its lower
 *     path: the kernel asks one after every READ (a read invalidates the
 *     cached atime), so a `grep -r` right after another sent one per file
 *     to Python. The daemon takes the inode back when its last name goes
 *     (an open file removed: its nlink is 0 then) or it is copied up; a
 *     lower entry that is now another one, hard-linked, or of another type
 *     goes to the daemon. Reply: fuse_out_header + fuse_attr_out (16 + 88).
 */
#define LK_OPCODE_LOOKUP 1
#define LK_OPCODE_READDIRPLUS 44
#define LK_OPCODE_GETATTR 3
#define LK_OPCODE_LISTXATTR 23
#define LK_IN_HEADER 40
/* Inode numbers of files made in the upper layer (whiteout.py
 * UPPER_ONLY_INO_TAG): never copied up, so never in the link index, whose
 * extra link makes an upper file's st_nlink count one name more than the
 * view shows (parts 20 and 22). */
#define UPPER_ONLY_INO (UINT64_C(1) << 62)
#define LK_BUCKETS 4096
#define LK_DEV_SHIFT 48
#define LK_QUEUE_MAX (64u << 20)

struct lk_attr {
    uint64_t ino, size, blocks, atime, mtime, ctime;
    uint32_t atimensec, mtimensec, ctimensec, mode, nlink, uid, gid, rdev, blksize, flags;
};
struct lk_entry_out {
    uint64_t nodeid, generation, entry_valid, attr_valid;
    uint32_t entry_valid_nsec, attr_valid_nsec;
    struct lk_attr attr;
};
struct lk_reply {
    uint32_t len; int32_t error; uint64_t unique;             /* fuse_out_header */
    struct lk_entry_out entry;
};
struct lk_dir { struct lk_dir *next; uint64_t ino, parent; size_t len; char path[]; };
struct lk_dev { uint64_t dev, tag; };

static int lk_on;
/* The lower root's path: every path here is resolved from it afresh, as the
 * daemon's are (a root replaced meanwhile, rm -r and recreated, is followed). */
#define LK_PATH 4096
static char lk_root[LK_PATH];
static size_t lk_root_len;
static uint64_t lk_ttl_sec;
static uint32_t lk_ttl_nsec;
static struct lk_dev lk_devs[64];
static int lk_ndevs;
static struct lk_dir *lk_dirs[LK_BUCKETS];
static char *lk_queue;
static size_t lk_qlen, lk_qcap;
static size_t cr_n; /* part 22's creations waiting for the daemon's absorb */
static void (*lk_absorb_cb)(void);
static int lk_bell_rung; /* (under lk_lock) LK_ABSORB_EAGER's doorbell rang since the last take */
/* Part 15: part 12's tables are also read and changed by the io_uring queue
 * threads (their LOOKUPs and listings), so every entry point holds this lock
 * (recursive: the entry points call each other). It is never held while
 * Python runs (the absorb callback). Where both are held, lk_lock is taken
 * first (astrid_lk_file_drop closing the shim's fd); a READ that opens a file
 * part 12 found (lk_read_entry) holds one at a time, and a queue thread never
 * holds both. */
static pthread_mutex_t lk_lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;
/* Bumped (under lk_lock) whenever something an answer rests on is taken back
 * or changed: a directory's or file's path replaced or dropped, the tables
 * cleared, a device re-tagged. A LOOKUP or GETATTR lets the lock go for its
 * lstat (version 19: two queue threads then stat cold lower inodes side by
 * side) and declines when this moved meanwhile. */
static uint64_t lk_gen;
static int64_t lk_stats[8]; /* entries answered here, negative entries, declined; files
                               opened for READ; listings answered here; GETATTRs;
                               listed by name only, the kernel holding them;
                               absorbs a queue thread's doorbell asked for */

/* `root` (`rlen` bytes), "/", `rel` (`len` bytes) into `out` (LK_PATH
 * bytes): its length, or 0 when it does not fit (the daemon's long paths
 * then). */
static size_t lk_join(char *out, const char *root, size_t rlen, const char *rel, size_t len)
{
    if (rlen + 1 + len + 1 > LK_PATH)
        return 0;
    memcpy(out, root, rlen);
    out[rlen] = '/';
    memcpy(out + rlen + 1, rel, len);
    out[rlen + 1 + len] = 0;
    return rlen + 1 + len;
}

/* The lower root, "/", `rel` into `out` (lk_join). The lower-relative part
 * starts at out + lk_root_len + 1. */
static size_t lk_abs(char *out, const char *rel, size_t len)
{
    return lk_join(out, lk_root, lk_root_len, rel, len);
}

/* "/" and `name` (`nlen` bytes) appended to `path` (`plen` bytes, in an
 * LK_PATH buffer): the new length, or 0 when it does not fit. */
static size_t lk_append(char *path, size_t plen, const char *name, size_t nlen)
{
    if (!plen || plen + 1 + nlen + 1 > LK_PATH)
        return 0;
    path[plen] = '/';
    memcpy(path + plen + 1, name, nlen);
    path[plen + 1 + nlen] = 0;
    return plen + 1 + nlen;
}

/* Inode -> lower path tables (directories, files): the slot of `ino`. */
static struct lk_dir **lk_find(struct lk_dir **table, uint64_t ino)
{
    struct lk_dir **p = &table[(ino * UINT64_C(0x9E3779B97F4A7C15)) >> 52];
    while (*p && (*p)->ino != ino)
        p = &(*p)->next;
    return p;
}

/* `ino` -> `path` (`len` bytes; `parent` kept for ".."), or with a NULL path
 * out of `table`. 0, or -ENOMEM (left out: its requests go to the daemon). */
static int lk_path_put(struct lk_dir **table, uint64_t ino, uint64_t parent, const char *path,
                       size_t len)
{
    struct lk_dir **slot = lk_find(table, ino);
    struct lk_dir *old = *slot;
    if (old && path && old->len == len && memcmp(old->path, path, len) == 0) {
        old->parent = parent;
        return 0;
    }
    if (old) {
        *slot = old->next;
        free(old);
        __atomic_add_fetch(&lk_gen, 1, __ATOMIC_RELEASE);
    }
    if (!path)
        return 0;
    struct lk_dir *d = malloc(sizeof *d + len + 1);
    if (!d)
        return -ENOMEM;
    d->ino = ino;
    d->parent = parent;
    d->len = len;
    memcpy(d->path, path, len);
    d->path[len] = 0;
    d->next = *slot;
    *slot = d;
    return 0;
}

#define lk_slot(ino) lk_find(lk_dirs, (ino))
#define lk_dir_set(ino, parent, path, len) lk_path_put(lk_dirs, (ino), (parent), (path), (len))

/* Serve LOOKUPs from the lower layer at `root` (an absolute path), entries
 * valid for `ttl` seconds; `absorb` is called, on the trio thread, whenever
 * answered entries are queued and a request goes to Python. */
int astrid_lk_enable(const char *root, double ttl, void (*absorb)(void))
{
    size_t len = root ? strlen(root) : 0;
    if (!len || root[0] != '/' || len + 2 > LK_PATH || ttl < 0 || !absorb)
        return -EINVAL;
    memcpy(lk_root, root, len + 1);
    lk_root_len = len;
    lk_ttl_sec = (uint64_t)ttl;
    lk_ttl_nsec = (uint32_t)((ttl - (double)lk_ttl_sec) * 1e9);
    lk_absorb_cb = absorb;
    lk_on = 1;
    return 0;
}

void astrid_lk_disable(void) { lk_on = 0; }

/* The daemon tagged lower device `dev` with `tag` (inodes.py DeviceTags). */
static int astrid_lk_dev_unlocked(uint64_t dev, uint64_t tag)
{
    for (int i = 0; i < lk_ndevs; i++)
        if (lk_devs[i].dev == dev) {
            if (lk_devs[i].tag != tag)
                __atomic_add_fetch(&lk_gen, 1, __ATOMIC_RELEASE);
            lk_devs[i].tag = tag;
            return 0;
        }
    if (lk_ndevs == (int)(sizeof lk_devs / sizeof lk_devs[0]))
        return -ENOSPC; /* then that device's entries go to the daemon */
    lk_devs[lk_ndevs].dev = dev;
    lk_devs[lk_ndevs].tag = tag;
    lk_ndevs++;
    return 0;
}

int astrid_lk_dev(uint64_t dev, uint64_t tag)
{
    pthread_mutex_lock(&lk_lock);
    int res = astrid_lk_dev_unlocked(dev, tag);
    pthread_mutex_unlock(&lk_lock);
    return res;
}


/* Regular files the shim found (one name, lower only), by inode: their first
 * READ is answered here too, from an fd the shim opens itself and keeps in
 * part 9's table marked `owned` (at most LK_OWNED of them; the daemon's own
 * fd for the inode replaces it, and its copy-up, a FORGET or a layer change
 * closes it), so a cold `grep -r` reads files without Python. */
#define LK_OWNED 256
static struct lk_dir *lk_files[LK_BUCKETS];
static uint64_t lk_owned_ring[LK_OWNED];
static int lk_owned_next;

#define lk_file_slot(ino) lk_find(lk_files, (ino))

#define lk_file_set(ino, path, len) lk_path_put(lk_files, (ino), 0, (path), (len))

/* Files the daemon listed in full (READDIRPLUS) that the shim may read as it
 * reads the ones it found: `len` bytes of records, each inode u64, path
 * length u16, the lower-relative path. */
static void astrid_lk_files_unlocked(const char *records, size_t len)
{
    size_t off = 0;
    while (off + 10 <= len) {
        uint64_t ino;
        uint16_t plen;
        memcpy(&ino, records + off, 8);
        memcpy(&plen, records + off + 8, 2);
        off += 10;
        if (off + plen > len)
            break;
        if (plen > 0 && records[off] != '/')
            lk_file_set(ino, records + off, plen);
        off += plen;
    }
}

void astrid_lk_files(const char *records, size_t len)
{
    pthread_mutex_lock(&lk_lock);
    astrid_lk_files_unlocked(records, len);
    pthread_mutex_unlock(&lk_lock);
}

static int lk_file_known_unlocked(uint64_t ino)
{
    return lk_on && *lk_file_slot(ino) != NULL;
}

static int lk_file_known(uint64_t ino)
{
    pthread_mutex_lock(&lk_lock);
    int res = lk_file_known_unlocked(ino);
    pthread_mutex_unlock(&lk_lock);
    return res;
}

/* wf_lock held: the shim's own fd of `ino` out of the table, if that is
 * what the table has (closed now, or by its last reader). */
static void lk_owned_close(uint64_t ino)
{
    struct wf_entry **slot = wf_slot(ino);
    if (*slot && (*slot)->owned)
        wf_remove(slot);
}

/* wf_lock held, `ino` not in part 9's table: `fd` (the file part 12 found)
 * put there as the shim's own, or NULL (and `fd` closed). */
static struct wf_entry *lk_owned_put(uint64_t ino, int fd)
{
    uint64_t victim = lk_owned_ring[lk_owned_next];
    if (victim)
        lk_owned_close(victim);
    lk_owned_ring[lk_owned_next] = ino;
    lk_owned_next = (lk_owned_next + 1) % LK_OWNED;
    struct wf_entry *e = calloc(1, sizeof *e);
    if (!e) {
        close(fd);
        return NULL;
    }
    e->ino = ino;
    e->fd = fd;
    e->owned = 1;
    e->id = __atomic_add_fetch(&wf_ids, 1, __ATOMIC_RELAXED);
    struct wf_entry **slot = wf_slot(ino);
    e->next = *slot;
    *slot = e;
    __atomic_add_fetch(&lk_stats[3], 1, __ATOMIC_RELAXED);
    return e;
}

/* Open the file part 12 found for its first READ (the drain's or, version
 * 21, a queue thread's), the caller holding neither lock: the path is read
 * under part 12's lock, the file opened with no lock held, and put in part
 * 9's table under its lock unless part 12 took anything back meanwhile
 * (lk_gen: a copy-up's astrid_lk_file_drop bumps it before it takes wf_lock
 * to close the shim's fd, so that fd is never put back after it). Returns
 * the entry with a reference taken (wf_put it), or NULL: the daemon answers. */
static struct wf_entry *lk_read_entry(uint64_t ino)
{
    char path[LK_PATH];
    pthread_mutex_lock(&lk_lock);
    const struct lk_dir *f = lk_on ? *lk_file_slot(ino) : NULL;
    int named = f != NULL && lk_abs(path, f->path, f->len) > 0;
    uint64_t gen = lk_gen;
    pthread_mutex_unlock(&lk_lock);
    if (!named)
        return NULL;
    int fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return NULL; /* the daemon answers (and decides the errno) */
    pthread_mutex_lock(&wf_lock);
    struct wf_entry *e = wf_get_locked(ino);
    if (e) {
        close(fd); /* another thread put an fd there meanwhile */
    } else if (__atomic_load_n(&lk_gen, __ATOMIC_ACQUIRE) != gen) {
        close(fd);
    } else if ((e = lk_owned_put(ino, fd)) != NULL) { /* (closes it if not) */
        e->refs++;
    }
    pthread_mutex_unlock(&wf_lock);
    return e;
}

/* The daemon copied file `ino` up (or it changed otherwise): its READs are
 * the daemon's again. */
static void astrid_lk_file_drop_unlocked(uint64_t ino)
{
    lk_file_set(ino, NULL, 0);
    pthread_mutex_lock(&wf_lock);
    lk_owned_close(ino);
    pthread_mutex_unlock(&wf_lock);
}

void astrid_lk_file_drop(uint64_t ino)
{
    pthread_mutex_lock(&lk_lock);
    astrid_lk_file_drop_unlocked(ino);
    pthread_mutex_unlock(&lk_lock);
}

/* A FORGET or BATCH_FORGET on its way to the daemon: the kernel dropped
 * those inodes, so drop what part 12 keeps of them. */
static void lk_forgotten_unlocked(const struct fuse_buf *buf)
{
    if (!lk_on || (buf->flags & FUSE_BUF_IS_FD) || buf->size < LK_IN_HEADER)
        return;
    const char *mem = buf->mem;
    uint32_t len, opcode;
    memcpy(&len, mem, 4);
    memcpy(&opcode, mem + 4, 4);
    if (len > buf->size)
        return;
    if (opcode == 2) { /* FUSE_FORGET */
        uint64_t nodeid;
        memcpy(&nodeid, mem + 16, 8);
        if (*lk_file_slot(nodeid))
            astrid_lk_file_drop(nodeid);
    } else if (opcode == 42 && len >= LK_IN_HEADER + 8) { /* FUSE_BATCH_FORGET */
        uint32_t count;
        memcpy(&count, mem + LK_IN_HEADER, 4);
        const char *one = mem + LK_IN_HEADER + 8;
        for (uint32_t i = 0; i < count && one + 16 <= mem + len; i++, one += 16) {
            uint64_t nodeid;
            memcpy(&nodeid, one, 8);
            if (*lk_file_slot(nodeid))
                astrid_lk_file_drop(nodeid);
        }
    }
}

static void lk_forgotten(const struct fuse_buf *buf)
{
    pthread_mutex_lock(&lk_lock);
    lk_forgotten_unlocked(buf);
    pthread_mutex_unlock(&lk_lock);
}

/* `path` (lower-relative, `len` bytes) non-NULL: LOOKUPs in directory `ino`
 * are answered here from now on; NULL: they go to the daemon again. */
static int astrid_lk_dir_unlocked(uint64_t ino, uint64_t parent, const char *path, size_t len)
{
    return lk_dir_set(ino, parent, path, len);
}

int astrid_lk_dir(uint64_t ino, uint64_t parent, const char *path, size_t len)
{
    pthread_mutex_lock(&lk_lock);
    int res = astrid_lk_dir_unlocked(ino, parent, path, len);
    pthread_mutex_unlock(&lk_lock);
    return res;
}

/* Every directory and file goes to the daemon again (the layers changed). */
static void astrid_lk_clear_unlocked(void)
{
    __atomic_add_fetch(&lk_gen, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < LK_BUCKETS; i++) {
        while (lk_dirs[i]) {
            struct lk_dir *d = lk_dirs[i];
            lk_dirs[i] = d->next;
            free(d);
        }
        while (lk_files[i])
            astrid_lk_file_drop(lk_files[i]->ino);
    }
}

void astrid_lk_clear(void)
{
    pthread_mutex_lock(&lk_lock);
    astrid_lk_clear_unlocked();
    pthread_mutex_unlock(&lk_lock);
}

/* Bytes of queued entries; astrid_lk_take copies them out (whole, if `cap`
 * allows) and empties the queue. Record: parent u64, inode u64, type u8
 * (0 file, 1 directory, 2 other), name length u8, the name. */
size_t astrid_lk_pending(void)
{
    pthread_mutex_lock(&lk_lock);
    size_t n = lk_qlen;
    pthread_mutex_unlock(&lk_lock);
    return n;
}

static size_t astrid_lk_take_unlocked(char *out, size_t cap)
{
    if (cap < lk_qlen)
        return 0;
    size_t n = lk_qlen;
    memcpy(out, lk_queue, n);
    lk_qlen = 0;
    lk_bell_rung = 0;
    return n;
}

size_t astrid_lk_take(char *out, size_t cap)
{
    pthread_mutex_lock(&lk_lock);
    size_t res = astrid_lk_take_unlocked(out, cap);
    pthread_mutex_unlock(&lk_lock);
    return res;
}

void astrid_lk_stats(int64_t *out)
{
    pthread_mutex_lock(&lk_lock);
    memcpy(out, lk_stats, sizeof lk_stats);
    pthread_mutex_unlock(&lk_lock);
}

static int lk_readdirplus(const char *mem, uint32_t len, int fuse_fd);

/* Over io_uring (version 19) a queue thread that has queued this many bytes
 * of entries rings the trio thread's doorbell once, and the trio thread
 * absorbs them while the queue threads go on answering (fuse_session_receive_buf):
 * git's index refresh is 10,000 LOOKUPs before its first request for Python,
 * whose absorb (~3 us of Python each) ran only then, on the critical path. */
#define LK_ABSORB_EAGER 8192

static int lk_queue_entry(uint64_t parent, uint64_t ino, uint8_t type, const char *name,
                          size_t nlen)
{
    size_t need = 18 + nlen;
    if (lk_qlen + need > lk_qcap) {
        size_t cap = lk_qcap ? lk_qcap * 2 : 65536;
        while (cap < lk_qlen + need)
            cap *= 2;
        if (cap > LK_QUEUE_MAX)
            return -1;
        char *q = realloc(lk_queue, cap);
        if (!q)
            return -1;
        lk_queue = q;
        lk_qcap = cap;
    }
    char *p = lk_queue + lk_qlen;
    memcpy(p, &parent, 8);
    memcpy(p + 8, &ino, 8);
    p[16] = (char)type;
    p[17] = (char)nlen;
    memcpy(p + 18, name, nlen);
    lk_qlen += need;
    if ((ur_target_set || dw_worker) && lk_qlen >= LK_ABSORB_EAGER && !lk_bell_rung) {
        uint64_t one = 1;
        lk_bell_rung = 1;
        (void)!write(ur_fwd_ev, &one, sizeof one);
    }
    return 0;
}

/* Before a request goes to Python: the daemon counts what was answered here. */
static void lk_absorb_pending(void)
{
    if ((lk_qlen || cr_n) && lk_absorb_cb)
        lk_absorb_cb();
}

/* The trio thread woke with nothing for Python: absorb now if a queue thread
 * rang for it (LK_ABSORB_EAGER). */
static void lk_absorb_asked(void)
{
    pthread_mutex_lock(&lk_lock);
    int asked = lk_bell_rung && (lk_qlen || cr_n);
    if (asked)
        lk_stats[7]++;
    pthread_mutex_unlock(&lk_lock);
    if (asked)
        lk_absorb_pending();
}

/* `st` as the attributes of overlay inode `ino` (`a` zeroed by the caller). */
static void lk_fill_attr(struct lk_attr *a, uint64_t ino, const struct stat *st)
{
    a->ino = ino;
    a->size = (uint64_t)st->st_size;
    a->blocks = (uint64_t)st->st_blocks;
    a->atime = (uint64_t)st->st_atim.tv_sec;
    a->mtime = (uint64_t)st->st_mtim.tv_sec;
    a->ctime = (uint64_t)st->st_ctim.tv_sec;
    a->atimensec = (uint32_t)st->st_atim.tv_nsec;
    a->mtimensec = (uint32_t)st->st_mtim.tv_nsec;
    a->ctimensec = (uint32_t)st->st_ctim.tv_nsec;
    a->mode = st->st_mode;
    a->nlink = (uint32_t)st->st_nlink;
    a->uid = st->st_uid;
    a->gid = st->st_gid;
    a->rdev = (uint32_t)st->st_rdev;
    a->blksize = (uint32_t)st->st_blksize;
}

/* A full entry for `st` (overlay inode `ino`), valid for the lower TTL. */
static void lk_fill_entry(struct lk_entry_out *e, uint64_t ino, const struct stat *st)
{
    memset(e, 0, sizeof *e);
    e->nodeid = ino;
    e->entry_valid = e->attr_valid = lk_ttl_sec;
    e->entry_valid_nsec = e->attr_valid_nsec = lk_ttl_nsec;
    lk_fill_attr(&e->attr, ino, st);
}

/* The lower root, "/", `d`'s lower path, "/", `name` into `path` (LK_PATH
 * bytes): its length, or 0 when it does not fit. The child's lower-relative
 * path is LK_REL(path), LK_REL_LEN(length) bytes. */
#define LK_REL(path) ((path) + lk_root_len + 1)
#define LK_REL_LEN(len) ((len) - lk_root_len - 1)
static size_t lk_child_path(char *path, const struct lk_dir *d, const char *name, size_t nlen)
{
    return lk_append(path, lk_abs(path, d->path, d->len), name, nlen);
}

/* The lower entry at `path` as the daemon's fast path takes it (core.py
 * `_lower_child`): 1 with its overlay inode number, 0 if it is not there,
 * -1 when the daemon must decide (a hard-linked file: another of its names
 * may have been copied up; a device not tagged yet; another errno). */
static int lk_classify(int err, const struct stat *st, uint64_t *ino)
{
    if (err)
        return err == ENOENT ? 0 : -1;
    if (S_ISREG(st->st_mode) && st->st_nlink > 1)
        return -1;
    for (int i = 0; i < lk_ndevs; i++)
        if (lk_devs[i].dev == (uint64_t)st->st_dev) {
            *ino = (lk_devs[i].tag << LK_DEV_SHIFT) | (uint64_t)st->st_ino;
            return 1;
        }
    return -1;
}

/* lk_classify of `path`'s lstat, taken with part 12's lock let go (the
 * caller holds it, maybe more than once: then it stays held); -1 when what
 * the answer rests on changed meanwhile (lk_gen, lk_on): the daemon decides. */
static int lk_stat_child(const char *path, struct stat *st, uint64_t *ino)
{
    uint64_t gen = lk_gen;
    pthread_mutex_unlock(&lk_lock);
    int err = lstat(path, st) == 0 ? 0 : errno;
    pthread_mutex_lock(&lk_lock);
    if (gen != lk_gen || !lk_on)
        return -1;
    return lk_classify(err, st, ino);
}

static uint8_t lk_type(mode_t mode)
{
    return S_ISDIR(mode) ? 1 : S_ISREG(mode) ? 0 : 2;
}

/* A regular file sent to the kernel here: read here too (above), and with
 * passthrough its read-only OPENs answered from part 6's table, as the
 * daemon's own lookup primes them (passthrough.py `prime`). */
static void lk_file_sent(uint64_t ino, const char *path, size_t len)
{
    lk_file_set(ino, path, len);
    if (pt_usable)
        astrid_pt_prime(ino);
}

static int lk_decline(void)
{
    lk_stats[2]++;
    return 0;
}

/* A reply of part 6 or 12: to /dev/fuse, or to the ring entry a queue thread
 * is answering (part 15). */
static ssize_t dev_reply(int fuse_fd, const void *buf, size_t len)
{
    return ur_target_set ? ur_target_reply(buf, len) : dev_write(fuse_fd, buf, len);
}

/* Version 17: a GETATTR of a directory named here or a file found here,
 * answered from one lstat of its lower path (1), or left to the daemon. */
struct lk_attr_reply {
    uint32_t len; int32_t error; uint64_t unique;             /* fuse_out_header */
    uint64_t attr_valid; uint32_t attr_valid_nsec, dummy;     /* fuse_attr_out */
    struct lk_attr attr;
};

static int lk_updir_getattr(uint64_t unique, uint64_t nodeid, int fuse_fd);

static int lk_getattr(const char *mem, int fuse_fd)
{
    uint64_t unique, nodeid;
    memcpy(&unique, mem + 8, 8);
    memcpy(&nodeid, mem + 16, 8);
    const struct lk_dir *known = *lk_slot(nodeid);
    int dir = known != NULL;
    if (!known)
        known = *lk_file_slot(nodeid);
    if (!known) /* (below) */
        return lk_updir_getattr(unique, nodeid, fuse_fd) || sa_getattr(unique, nodeid, fuse_fd);
    char path[LK_PATH];
    if (!known || !lk_abs(path, known->path, known->len))
        return 0;
    struct stat st;
    uint64_t ino = 0;
    if (lk_stat_child(path, &st, &ino) != 1 || ino != nodeid
        || (dir ? !S_ISDIR(st.st_mode) : !S_ISREG(st.st_mode)))
        return 0; /* gone, replaced, hard-linked: the daemon decides */
    struct lk_attr_reply r;
    memset(&r, 0, sizeof r);
    r.len = sizeof r;
    r.unique = unique;
    r.attr_valid = lk_ttl_sec; /* as a LOOKUP's entry */
    r.attr_valid_nsec = lk_ttl_nsec;
    lk_fill_attr(&r.attr, nodeid, &st);
    if (dev_reply(fuse_fd, &r, sizeof r) < 0)
        return errno == ENOENT; /* ENOENT: interrupted, no answer wanted */
    lk_stats[5]++;
    return 1;
}

/* Version 31: a LISTXATTR of a directory or file named here (`cp -a` and
 * `rsync -X` list each one they copy, twice: the size, then the names),
 * answered when its lower entry has no extended attributes at all: the
 * daemon lists the layer entry's names less its own (overlay.py
 * `listxattr`), so an entry with none is an empty list there too. Names, an
 * error, an entry not named here go to the daemon. ABI: fuse_getxattr_in
 * (size, padding) after the header; the reply is fuse_getxattr_out (size 0)
 * when the size was asked for, else no data. */
struct lk_listxattr_reply {
    uint32_t len; int32_t error; uint64_t unique; /* fuse_out_header */
    uint32_t size, padding;                        /* fuse_getxattr_out */
};

static int lk_listxattr(const char *mem, uint32_t len, int fuse_fd)
{
    if (len < LK_IN_HEADER + 8)
        return 0;
    uint64_t unique, nodeid;
    uint32_t size;
    memcpy(&unique, mem + 8, 8);
    memcpy(&nodeid, mem + 16, 8);
    memcpy(&size, mem + LK_IN_HEADER, 4);
    const struct lk_dir *known = *lk_slot(nodeid);
    if (!known)
        known = *lk_file_slot(nodeid);
    char path[LK_PATH];
    if (!known || !lk_abs(path, known->path, known->len))
        return 0;
    uint64_t gen = lk_gen;
    pthread_mutex_unlock(&lk_lock);
    ssize_t n = llistxattr(path, NULL, 0);
    pthread_mutex_lock(&lk_lock);
    if (n != 0 || gen != lk_gen || !lk_on)
        return 0;
    struct lk_listxattr_reply r;
    memset(&r, 0, sizeof r);
    r.len = size ? 16 : sizeof r;
    r.unique = unique;
    if (dev_reply(fuse_fd, &r, r.len) < 0)
        return errno == ENOENT; /* ENOENT: interrupted, no answer wanted */
    return 1;
}

/*
 * 19. GETATTRs of directories in the upper layer (version 30). A change in a
 *     directory (a create, an unlink, a rename) makes the kernel drop the
 *     directory's cached attributes, and its next permission check of that
 *     directory (default_permissions) asks GETATTR: `rm -rf` of a tree, `cp
 *     -a` or `tar x` into one sent a GETATTR to Python for every file, as
 *     many as the UNLINKs or CREATEs themselves (each ~100 us of the trio
 *     thread here). Once the daemon has answered a GETATTR of a directory
 *     that has an upper directory, it names that directory here
 *     (astrid_lk_updir: inode -> upper path, the upper directory's inode
 *     number, and for a merged directory its lower path and the lower
 *     mtime the daemon last saw), and later GETATTRs of it are answered from
 *     one lstat of the upper directory, as the daemon answers them: the
 *     upper's attributes under the overlay inode, nlink 1 and the lower TTL
 *     for a merged directory, the upper's nlink and UPPER_TTL otherwise.
 *     Anything else goes to the daemon: the upper path no longer that
 *     directory (another inode number there, or none: removed, replaced),
 *     the lower directory's mtime moved (the project edited: the daemon
 *     drops the kernel's caches of it), the lower one gone. The daemon takes
 *     entries back when a directory's path may change (any directory renamed
 *     or removed: astrid_lk_updir_clear), its layer state changes, or the
 *     kernel forgets it. Paths are relative to the upper root
 *     (astrid_lk_updir_enable) and part 12's lower root. Version 31: the
 *     LOOKUPs of names such a directory does not show are answered here
 *     too (lk_updir_lookup, below).
 */
struct lk_updir {
    struct lk_updir *next;
    uint64_t ino, upper_ino;
    int64_t lower_mtime;
    int merged, has_lower;
    size_t ulen, llen;
    char paths[]; /* upper path, NUL, lower path, NUL */
};
static struct lk_updir *lk_updirs[LK_BUCKETS];
static size_t lk_updir_count; /* (a clear with none is one test, not 4,096) */
static char lk_upper_root[LK_PATH];
static size_t lk_upper_root_len;
static uint64_t lk_upper_ttl_sec;
static uint32_t lk_upper_ttl_nsec;

static struct lk_updir **lk_updir_slot(uint64_t ino)
{
    struct lk_updir **p = &lk_updirs[(ino * UINT64_C(0x9E3779B97F4A7C15)) >> 52];
    while (*p && (*p)->ino != ino)
        p = &(*p)->next;
    return p;
}

int astrid_lk_updir_enable(const char *upper_root, double upper_ttl)
{
    size_t len = upper_root ? strlen(upper_root) : 0;
    if (!len || upper_root[0] != '/' || len + 2 > LK_PATH || upper_ttl < 0)
        return -EINVAL;
    pthread_mutex_lock(&lk_lock);
    memcpy(lk_upper_root, upper_root, len + 1);
    lk_upper_root_len = len;
    lk_upper_ttl_sec = (uint64_t)upper_ttl;
    lk_upper_ttl_nsec = (uint32_t)((upper_ttl - (double)lk_upper_ttl_sec) * 1e9);
    pthread_mutex_unlock(&lk_lock);
    return 0;
}

/* `ino` -> its upper path (`ulen` bytes, relative to the upper root), the
 * upper directory's inode number, and with `has_lower` its lower path and
 * the lower mtime seen; with a NULL upper path out of the table. 0, or
 * -ENOMEM (left out: the daemon answers). */
int astrid_lk_updir(uint64_t ino, const char *upath, size_t ulen, uint64_t upper_ino,
                    int has_lower, const char *lower, size_t llen, int64_t lower_mtime,
                    int merged)
{
    pthread_mutex_lock(&lk_lock);
    struct lk_updir **slot = lk_updir_slot(ino);
    if (*slot) {
        struct lk_updir *old = *slot;
        *slot = old->next;
        free(old);
        lk_updir_count--;
    }
    __atomic_add_fetch(&lk_gen, 1, __ATOMIC_RELEASE);
    int res = 0;
    if (upath) {
        if (!has_lower)
            llen = 0;
        struct lk_updir *u = malloc(sizeof *u + ulen + 1 + llen + 1);
        if (!u) {
            res = -ENOMEM;
        } else {
            u->ino = ino;
            u->upper_ino = upper_ino;
            u->lower_mtime = lower_mtime;
            u->merged = merged;
            u->has_lower = has_lower;
            u->ulen = ulen;
            u->llen = llen;
            memcpy(u->paths, upath, ulen);
            u->paths[ulen] = 0;
            if (llen)
                memcpy(u->paths + ulen + 1, lower, llen);
            u->paths[ulen + 1 + llen] = 0;
            u->next = *slot;
            *slot = u;
            lk_updir_count++;
        }
    }
    pthread_mutex_unlock(&lk_lock);
    return res;
}

void astrid_lk_updir_clear(void)
{
    pthread_mutex_lock(&lk_lock);
    for (size_t i = 0; lk_updir_count && i < LK_BUCKETS; i++)
        while (lk_updirs[i]) {
            struct lk_updir *u = lk_updirs[i];
            lk_updirs[i] = u->next;
            free(u);
            lk_updir_count--;
        }
    __atomic_add_fetch(&lk_gen, 1, __ATOMIC_RELEASE);
    pthread_mutex_unlock(&lk_lock);
}

/* The upper root, "/", `rel` into `out` (lk_join). */
static size_t lk_upper_abs(char *out, const char *rel, size_t len)
{
    return lk_join(out, lk_upper_root, lk_upper_root_len, rel, len);
}

/* A GETATTR of a directory part 19 names (caller holds lk_lock): 1 when
 * answered here, 0 for the daemon. */
static int lk_updir_getattr(uint64_t unique, uint64_t nodeid, int fuse_fd)
{
    const struct lk_updir *u = *lk_updir_slot(nodeid);
    if (!u || !lk_upper_root_len)
        return 0;
    char upath[LK_PATH], lpath[LK_PATH];
    if (!lk_upper_abs(upath, u->paths, u->ulen)
        || (u->has_lower && !lk_abs(lpath, u->paths + u->ulen + 1, u->llen)))
        return 0;
    uint64_t upper_ino = u->upper_ino, gen = lk_gen;
    int64_t lower_mtime = u->lower_mtime;
    int merged = u->merged, has_lower = u->has_lower;
    struct stat st, lst;
    pthread_mutex_unlock(&lk_lock);
    int ok = lstat(upath, &st) == 0 && S_ISDIR(st.st_mode) && (uint64_t)st.st_ino == upper_ino;
    if (ok && has_lower)
        ok = lstat(lpath, &lst) == 0 && S_ISDIR(lst.st_mode)
             && (int64_t)lst.st_mtim.tv_sec * 1000000000 + lst.st_mtim.tv_nsec == lower_mtime;
    pthread_mutex_lock(&lk_lock);
    if (!ok || gen != lk_gen || !lk_on)
        return 0;
    struct lk_attr_reply r;
    memset(&r, 0, sizeof r);
    r.len = sizeof r;
    r.unique = unique;
    r.attr_valid = merged ? lk_ttl_sec : lk_upper_ttl_sec;
    r.attr_valid_nsec = merged ? lk_ttl_nsec : lk_upper_ttl_nsec;
    lk_fill_attr(&r.attr, nodeid, &st);
    if (merged)
        r.attr.nlink = 1;
    if (dev_reply(fuse_fd, &r, sizeof r) < 0)
        return errno == ENOENT;
    lk_stats[5]++;
    return 1;
}

/* A LOOKUP's negative entry (nodeid 0, the lower TTL, as the daemon's):
 * 1, or the daemon answers (lk_decline) if it could not be sent. */
static int lk_negative(uint64_t unique, int fuse_fd)
{
    struct lk_reply r;
    memset(&r, 0, sizeof r);
    r.len = sizeof r;
    r.unique = unique;
    r.entry.entry_valid = lk_ttl_sec;
    r.entry.entry_valid_nsec = lk_ttl_nsec;
    if (dev_reply(fuse_fd, &r, sizeof r) < 0 && errno != ENOENT)
        return lk_decline(); /* (ENOENT: the request was interrupted) */
    lk_stats[1]++;
    return 1;
}

/* Version 31: a LOOKUP of a name a directory part 19 names does not show
 * (caller holds lk_lock). The daemon's answer there is a negative entry with
 * the lower TTL when the upper directory has no such entry, or a whiteout
 * (a kernel-format one: character device 0/0), and the lower directory, if
 * merged, has none either (layers.py `resolve_child`): so is this one, from
 * lstats of the upper directory (still the one named), of its entry and of
 * the lower entry. `cp -a`, `tar x` and every compiler probe sent one such
 * LOOKUP to Python per file created or name probed. Anything else (the name
 * there, an xattr whiteout, another errno, the directory replaced) the
 * daemon decides: 1 when answered here, 0 for the daemon. */
static int lk_updir_lookup(uint64_t unique, uint64_t parent, const char *name, size_t nlen,
                           int fuse_fd)
{
    const struct lk_updir *u = *lk_updir_slot(parent);
    if (!u || !lk_upper_root_len)
        return 0;
    char udir[LK_PATH], uname[LK_PATH], lname[LK_PATH];
    size_t ulen = lk_upper_abs(udir, u->paths, u->ulen);
    memcpy(uname, udir, ulen);
    if (!lk_append(uname, ulen, name, nlen)
        || (u->has_lower
            && !lk_append(lname, lk_abs(lname, u->paths + u->ulen + 1, u->llen), name, nlen)))
        return lk_decline();
    uint64_t upper_ino = u->upper_ino, gen = lk_gen;
    int has_lower = u->has_lower;
    struct stat st;
    pthread_mutex_unlock(&lk_lock);
    int ok = lstat(udir, &st) == 0 && S_ISDIR(st.st_mode) && (uint64_t)st.st_ino == upper_ino;
    int whiteout = 0;
    if (ok) {
        if (lstat(uname, &st) == 0)
            ok = whiteout = S_ISCHR(st.st_mode) && st.st_rdev == 0;
        else
            ok = errno == ENOENT;
    }
    if (ok && has_lower && !whiteout)
        ok = lstat(lname, &st) != 0 && errno == ENOENT;
    pthread_mutex_lock(&lk_lock);
    if (!ok || gen != lk_gen || !lk_on)
        return lk_decline();
    return lk_negative(unique, fuse_fd);
}

/* The request in `buf` when it is an `opcode` request whole in memory with
 * at least `in` bytes of arguments after the header, its unique and nodeid
 * read; else NULL (parts 20 and 21). */
static const char *raw_request(const struct fuse_buf *buf, uint32_t opcode, size_t in,
                               uint64_t *unique, uint64_t *nodeid)
{
    if ((buf->flags & FUSE_BUF_IS_FD) || buf->size < LK_IN_HEADER + in)
        return NULL;
    const char *mem = buf->mem;
    uint32_t len, op;
    memcpy(&len, mem, 4);
    memcpy(&op, mem + 4, 4);
    if (op != opcode || len < LK_IN_HEADER + in || len > buf->size)
        return NULL;
    memcpy(unique, mem + 8, 8);
    memcpy(nodeid, mem + 16, 8);
    return mem;
}

/*
 * 20. SETATTRs of upper files (version 32). `cp -a`, `tar x`, `touch`,
 *     `chmod +x`, pip and npm set a file's times or mode right after they
 *     write it: a SETATTR each to Python (~100 us of the trio thread here).
 *     A SETATTR that changes only the mode and the times of a file part 9's
 *     table holds a read-write fd for (an upper file, one name) is done here
 *     on that fd, as the daemon does it on the upper path (overlay.py
 *     `setattr`: chmod, then the times, a time not given kept), and answered
 *     with the fd's fstat under the overlay inode, nlink 1, for the upper
 *     TTL (ops.py `_entry`). The daemon answers (it is left the request) an
 *     owner or a size (suid/sgid kills, copy-up of data), a kill flag, a
 *     file with another link (it shows a hard-linked file's count from its
 *     origin) or none (removed, open), any error, and passthrough mounts
 *     (it reconsiders a file whose mode changed). Needs part 19's upper TTL.
 *     Version 34: files made in the session only (upper-only numbers): a
 *     copied-up file hard-linked in the lower has an index link, so its
 *     nlink 1 could be a file the view shows with none (a hypothesis run).
 *     ABI: fuse_setattr_in (88 bytes: valid @0, atime @32, mtime @40,
 *     atimensec @56, mtimensec @60, mode @68) after the header; the reply
 *     is fuse_attr_out.
 */
#define SA_OPCODE 4
#define SA_IN 88
#define SA_MODE (1u << 0)
#define SA_ATIME (1u << 4)
#define SA_MTIME (1u << 5)
#define SA_FH (1u << 6)
#define SA_ATIME_NOW (1u << 7)
#define SA_MTIME_NOW (1u << 8)
/* uid, gid, size, lock owner, ctime, kill suid/sgid: the daemon's */
#define SA_HERE (SA_MODE | SA_ATIME | SA_MTIME | SA_FH | SA_ATIME_NOW | SA_MTIME_NOW)

static int64_t sa_stats[3]; /* answered here; left to the daemon; GETATTRs (below) */

void astrid_sa_stats(int64_t *out)
{
    for (int i = 0; i < 3; i++)
        out[i] = __atomic_load_n(&sa_stats[i], __ATOMIC_RELAXED);
}

/* The attributes of the file behind `e` (fstat, its one name: nlink 1) as
 * the daemon answers them for an upper file (ops.py `_entry`: the overlay
 * inode, the upper TTL): 1 when sent (or the request was interrupted). */
static int sa_reply_attr(uint64_t unique, uint64_t nodeid, const struct stat *st, int fuse_fd)
{
    struct lk_attr_reply r;
    memset(&r, 0, sizeof r);
    r.len = sizeof r;
    r.unique = unique;
    r.attr_valid = lk_upper_ttl_sec;
    r.attr_valid_nsec = lk_upper_ttl_nsec;
    lk_fill_attr(&r.attr, nodeid, st);
    return dev_reply(fuse_fd, &r, sizeof r) >= 0 || errno == ENOENT; /* (ENOENT: interrupted) */
}

/* Version 34: a GETATTR of a file part 9's table holds a read-write fd for
 * (an upper file with one name), answered from that fd's fstat as the
 * daemon answers it from the upper path's lstat (core.py `stat`: the same
 * file while it has one name). Without writeback caching the kernel drops
 * a file's size and times after each WRITE, so whoever stats what it just
 * wrote (git's index, make, an editor) sent a GETATTR to Python per file:
 * `git clone` of 300 files, 837. Passthrough mounts, a file with another
 * name or none, an error, and a file copied up from the lower layer (one
 * hard-linked there has a link in the index too: nlink 1 when the view
 * shows none) stay the daemon's: only upper-only numbers here. */
static int sa_getattr(uint64_t unique, uint64_t nodeid, int fuse_fd)
{
    if (pt_enabled || !lk_upper_root_len || !(nodeid & UPPER_ONLY_INO))
        return 0;
    struct wf_entry *e = wf_get_writable(nodeid);
    if (!e)
        return 0;
    struct stat st;
    int ok = fstat(e->fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1;
    wf_put(e);
    if (!ok || !sa_reply_attr(unique, nodeid, &st, fuse_fd))
        return 0;
    __atomic_add_fetch(&sa_stats[2], 1, __ATOMIC_RELAXED);
    return 1;
}

static struct timespec sa_time(uint32_t valid, uint32_t set, uint32_t now, const char *in,
                               size_t sec_at, size_t nsec_at)
{
    struct timespec ts = { 0, UTIME_OMIT };
    if (valid & now) {
        ts.tv_nsec = UTIME_NOW;
    } else if (valid & set) {
        uint64_t sec;
        uint32_t nsec;
        memcpy(&sec, in + sec_at, 8);
        memcpy(&nsec, in + nsec_at, 4);
        ts.tv_sec = (time_t)sec;
        ts.tv_nsec = nsec;
    }
    return ts;
}

static int sa_try(const struct fuse_buf *buf, int fuse_fd)
{
    uint64_t unique, nodeid;
    const char *mem = pt_enabled || !lk_upper_root_len ? NULL
                      : raw_request(buf, SA_OPCODE, SA_IN, &unique, &nodeid);
    if (!mem)
        return 0;
    uint32_t valid, mode;
    const char *in = mem + LK_IN_HEADER;
    memcpy(&valid, in, 4);
    memcpy(&mode, in + 68, 4);
    struct wf_entry *e = (valid & ~SA_HERE) || !(nodeid & UPPER_ONLY_INO)
                         ? NULL : wf_get_writable(nodeid);
    if (!e) {
        __atomic_add_fetch(&sa_stats[1], 1, __ATOMIC_RELAXED);
        return 0;
    }
    struct stat st;
    int ok = fstat(e->fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_nlink == 1;
    if (ok && (valid & SA_MODE))
        ok = fchmod(e->fd, mode & 07777) == 0;
    if (ok && (valid & (SA_ATIME | SA_MTIME | SA_ATIME_NOW | SA_MTIME_NOW))) {
        struct timespec ts[2] = { sa_time(valid, SA_ATIME, SA_ATIME_NOW, in, 32, 56),
                                  sa_time(valid, SA_MTIME, SA_MTIME_NOW, in, 40, 60) };
        ok = futimens(e->fd, ts) == 0;
    }
    ok = ok && fstat(e->fd, &st) == 0 && st.st_nlink == 1;
    wf_put(e);
    if (!ok) { /* (what was done, the daemon does again: the same) */
        __atomic_add_fetch(&sa_stats[1], 1, __ATOMIC_RELAXED);
        return 0;
    }
    if (!sa_reply_attr(unique, nodeid, &st, fuse_fd))
        return 0;
    __atomic_add_fetch(&sa_stats[0], 1, __ATOMIC_RELAXED);
    return 1;
}

/*
 * 21. COPY_FILE_RANGE between files part 9's table holds (version 33). `cp`
 *     copies a file with copy_file_range(2): through the mount one request
 *     per 64 MiB, each a ctypes callback into the daemon (extra_ops.py), ~50
 *     us of the trio thread per file copied. When both handles are by inode
 *     (no_open), the destination has a read-write fd in the table (an upper
 *     file) and the source any fd there, or is a lower file part 12 found
 *     (opened as for its first READ), the copy is made here between those
 *     fds, up to the daemon's chunk, and its errno is the answer otherwise,
 *     as the callback's would be. Anything else (flags, a real handle, a
 *     destination not yet copied up: the daemon copies it up first, a remote
 *     file, passthrough mounts) goes to the daemon. ABI:
 *     fuse_copy_file_range_in (fh_in, off_in, nodeid_out, fh_out, off_out,
 *     len, flags: 56 bytes) after the header; the reply is fuse_write_out.
 */
#define CF_OPCODE 47
#define CF_IN 56
#define CF_CHUNK (UINT64_C(64) << 20) /* extra_ops.py COPY_CHUNK */

static int64_t cf_stats[2]; /* copies made here; left to the daemon */

void astrid_cf_stats(int64_t *out)
{
    for (int i = 0; i < 2; i++)
        out[i] = __atomic_load_n(&cf_stats[i], __ATOMIC_RELAXED);
}

struct cf_reply {
    uint32_t len; int32_t error; uint64_t unique; /* fuse_out_header */
    uint32_t size, padding;                        /* fuse_write_out */
};

static int cf_try(const struct fuse_buf *buf, int fuse_fd)
{
    uint64_t unique, ino_in, in[7]; /* fh_in, off_in, nodeid_out, fh_out, off_out, len, flags */
    const char *mem = pt_enabled ? NULL : raw_request(buf, CF_OPCODE, CF_IN, &unique, &ino_in);
    if (!mem)
        return 0;
    memcpy(in, mem + LK_IN_HEADER, sizeof in);
    struct wf_entry *dst = NULL, *src = NULL;
    if (!in[0] && !in[3] && !in[6] && in[1] <= INT64_MAX && in[4] <= INT64_MAX
        && (dst = wf_get_writable(in[2])) != NULL) {
        src = wf_get(ino_in);
        if (!src)
            src = lk_read_entry(ino_in);
    }
    if (!src) {
        if (dst)
            wf_put(dst);
        __atomic_add_fetch(&cf_stats[1], 1, __ATOMIC_RELAXED);
        return 0;
    }
    loff_t off_in = (loff_t)in[1], off_out = (loff_t)in[4];
    ssize_t n = copy_file_range(src->fd, &off_in, dst->fd, &off_out,
                                in[5] < CF_CHUNK ? (size_t)in[5] : (size_t)CF_CHUNK, 0);
    int err = n < 0 ? errno : 0;
    wf_put(src);
    wf_put(dst);
    struct cf_reply r;
    memset(&r, 0, sizeof r);
    r.len = err ? 16 : sizeof r;
    r.error = -err;
    r.unique = unique;
    r.size = n < 0 ? 0 : (uint32_t)n;
    if (dev_reply(fuse_fd, &r, r.len) < 0 && errno != ENOENT)
        return 0; /* (ENOENT: the request was interrupted) */
    __atomic_add_fetch(&cf_stats[0], 1, __ATOMIC_RELAXED);
    return 1;
}

/*
 * 22. CREATEs in a session's directories (version 34). `cp -a`, `tar x`,
 *     `git checkout`, pip, npm and every compiler make files: after parts
 *     19-21 a CREATE was the one request per file still answered by Python
 *     (~100 us of the trio thread with pyfuse3's wrapper). A CREATE of a
 *     regular file in a directory part 19 names (it has an upper directory)
 *     that the daemon says the kernel holds no listing of (`astrid_cr_dir`:
 *     made or changed since the daemon last listed it, cache.py
 *     `_unlisted`, so no cached listing needs dropping) is made here as the
 *     daemon makes it (namespace.py `create`): the upper directory opened
 *     by path and checked to be the one named (its inode), the name absent
 *     from the lower directory if merged, the file created in it with
 *     O_EXCL (a whiteout or any entry there fails it: the daemon decides),
 *     owned by the caller (the directory's group if it is set-group-ID),
 *     its mode set after the owner. The read-write fd goes into part 9's
 *     table (its WRITEs, SETATTRs, copies are then C's too) and the reply
 *     is the daemon's: an upper-only inode number (the upper file's, tagged
 *     1 << 62), upper TTL, handle 0, FOPEN_DIRECT_IO for a write-only open
 *     when the daemon asks for it. The generation is this part's own
 *     (a count << 32: never one the daemon gave that number, which counts
 *     up from 0 by one), so an old inode of a reused number the kernel
 *     still holds is told apart. The creation is queued for the daemon's
 *     absorb (its node, its lookup, its fd adopted, the kept listing) before
 *     the reply, as part 12's entries; at most CR_PENDING wait (each holds
 *     an fd): then the daemon answers, absorbing first. Declined (the
 *     daemon's): passthrough, the lower root, names it must decide (".",
 *     "..", part 8's "/"), a kill flag, any error (a file made here is
 *     removed again first).
 *     ABI: fuse_create_in (flags, mode, umask, open_flags: 16 bytes), then
 *     the name; the reply is fuse_entry_out, then fuse_open_out.
 */
#define CR_OPCODE 35
#define CR_IN 16
#define CR_PENDING 256
#define CR_KILL_SUIDGID 1u                 /* FUSE_OPEN_KILL_SUIDGID */

struct cr_made { /* one creation for the daemon's absorb (create_table.py) */
    uint64_t parent, ino, generation;
    int64_t mtime_ns;
    int32_t fd;
    uint32_t nlen;
    char name[256];
};
struct cr_reply {
    uint32_t len; int32_t error; uint64_t unique; /* fuse_out_header */
    struct lk_entry_out entry;
    uint64_t fh; uint32_t open_flags; int32_t backing_id; /* fuse_open_out */
};

static int cr_on, cr_direct;
static uint64_t cr_gens;                /* generations given: count << 32 */
static struct cr_made cr_queue[CR_PENDING]; /* cr_n of them (under lk_lock) */
static uint64_t *cr_dirs;               /* open addressing, 0 free, 1 deleted */
static size_t cr_dirs_cap, cr_dirs_used;
static int64_t cr_stats[2];             /* made here; left to the daemon */

/* The daemon answers CREATEs here from now on (`on`), write-only ones with
 * FOPEN_DIRECT_IO if `direct` (cache.py `direct_for_create`). */
int astrid_cr_enable(int on, int direct)
{
    pthread_mutex_lock(&lk_lock);
    cr_on = on;
    cr_direct = direct;
    pthread_mutex_unlock(&lk_lock);
    return 0;
}

static uint64_t *cr_dir_slot(uint64_t ino, int for_insert)
{
    if (!cr_dirs_cap)
        return NULL;
    size_t mask = cr_dirs_cap - 1, i = (size_t)((ino * UINT64_C(0x9E3779B97F4A7C15)) >> 20) & mask;
    uint64_t *tomb = NULL;
    for (size_t n = 0; n < cr_dirs_cap; n++, i = (i + 1) & mask) {
        if (cr_dirs[i] == ino)
            return &cr_dirs[i];
        if (cr_dirs[i] == 1 && !tomb)
            tomb = &cr_dirs[i];
        if (!cr_dirs[i])
            return for_insert ? (tomb ? tomb : &cr_dirs[i]) : NULL;
    }
    return for_insert ? tomb : NULL;
}

/* Directory `ino` has no listing in the kernel (`unlisted`: CREATEs in it
 * may be made here), or may have one; `ino` 0: none has (all forgotten). */
int astrid_cr_dir(uint64_t ino, int unlisted)
{
    int res = 0;
    pthread_mutex_lock(&lk_lock);
    if (!ino) {
        if (cr_dirs)
            memset(cr_dirs, 0, cr_dirs_cap * sizeof *cr_dirs);
        cr_dirs_used = 0;
    } else if (ino > 1 && !unlisted) {
        uint64_t *slot = cr_dir_slot(ino, 0);
        if (slot)
            *slot = 1;
    } else if (ino > 1) {
        if ((cr_dirs_used + 1) * 2 > cr_dirs_cap) { /* (rehash, dropping tombstones) */
            size_t live = 0, cap = cr_dirs_cap ? cr_dirs_cap : 1024;
            for (size_t i = 0; i < cr_dirs_cap; i++)
                live += cr_dirs[i] > 1;
            while ((live + 1) * 2 > cap)
                cap *= 2;
            uint64_t *old = cr_dirs, *fresh = calloc(cap, sizeof *fresh);
            size_t old_cap = cr_dirs_cap;
            if (!fresh) {
                pthread_mutex_unlock(&lk_lock);
                return -ENOMEM; /* (left out: the daemon answers its CREATEs) */
            }
            cr_dirs = fresh;
            cr_dirs_cap = cap;
            cr_dirs_used = 0;
            for (size_t i = 0; i < old_cap; i++)
                if (old[i] > 1) {
                    *cr_dir_slot(old[i], 1) = old[i];
                    cr_dirs_used++;
                }
            free(old);
        }
        uint64_t *slot = cr_dir_slot(ino, 1);
        if (slot && *slot != ino) {
            if (!*slot)
                cr_dirs_used++;
            *slot = ino;
        }
    }
    pthread_mutex_unlock(&lk_lock);
    return res;
}

/* Up to `cap` creations waiting for the daemon into `out`: how many. */
size_t astrid_cr_take(struct cr_made *out, size_t cap)
{
    pthread_mutex_lock(&lk_lock);
    size_t n = cr_n < cap ? cr_n : cap;
    memcpy(out, cr_queue, n * sizeof *out);
    memmove(cr_queue, cr_queue + n, (cr_n - n) * sizeof *out);
    cr_n -= n;
    lk_bell_rung = 0;
    pthread_mutex_unlock(&lk_lock);
    return n;
}

static int64_t rl_stats;

/* out: files made here; CREATEs left to the daemon; RELEASEs of handle 0
 * answered here (below). */
void astrid_cr_stats(int64_t *out)
{
    for (int i = 0; i < 2; i++)
        out[i] = __atomic_load_n(&cr_stats[i], __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&rl_stats, __ATOMIC_RELAXED);
}

static int cr_decline(void)
{
    __atomic_add_fetch(&cr_stats[1], 1, __ATOMIC_RELAXED);
    return 0;
}

static int cr_try(const struct fuse_buf *buf, int fuse_fd)
{
    uint64_t unique, parent;
    const char *mem = pt_enabled || !cr_on
                      ? NULL : raw_request(buf, CR_OPCODE, CR_IN + 2, &unique, &parent);
    if (!mem)
        return 0;
    uint32_t len, uid, gid, flags, mode, open_flags;
    memcpy(&len, mem, 4);
    memcpy(&uid, mem + 24, 4);
    memcpy(&gid, mem + 28, 4);
    memcpy(&flags, mem + LK_IN_HEADER, 4);
    memcpy(&mode, mem + LK_IN_HEADER + 4, 4);
    memcpy(&open_flags, mem + LK_IN_HEADER + 12, 4);
    const char *name = mem + LK_IN_HEADER + CR_IN;
    size_t room = len - LK_IN_HEADER - CR_IN, nlen = strnlen(name, room);
    if (nlen == room || nlen == 0 || nlen > 255 || memchr(name, '/', nlen)
        || (name[0] == '.' && (nlen == 1 || (nlen == 2 && name[1] == '.')))
        || !S_ISREG(mode) || (open_flags & CR_KILL_SUIDGID) || parent <= 1)
        return cr_decline();
    char udir[LK_PATH], lname[LK_PATH];
    pthread_mutex_lock(&lk_lock);
    const struct lk_updir *u = *lk_updir_slot(parent);
    if (!u || !lk_upper_root_len || !lk_on || cr_n >= CR_PENDING || !cr_dir_slot(parent, 0)
        || !lk_upper_abs(udir, u->paths, u->ulen)
        || (u->has_lower
            && !lk_append(lname, lk_abs(lname, u->paths + u->ulen + 1, u->llen), name, nlen))) {
        pthread_mutex_unlock(&lk_lock);
        return cr_decline();
    }
    uint64_t upper_ino = u->upper_ino;
    int has_lower = u->has_lower, direct = cr_direct;
    pthread_mutex_unlock(&lk_lock);

    struct stat dst, st;
    int dfd = open(udir, O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (dfd < 0)
        return cr_decline();
    if (fstat(dfd, &dst) != 0 || (uint64_t)dst.st_ino != upper_ino
        || (has_lower && !(lstat(lname, &st) != 0 && errno == ENOENT))) {
        close(dfd);
        return cr_decline();
    }
    int oflags = (int)(flags & ~(uint32_t)(O_CREAT | O_EXCL | O_NOCTTY | O_APPEND | O_DIRECT
                                           | O_ACCMODE | O_TMPFILE));
    char cname[256];
    memcpy(cname, name, nlen);
    cname[nlen] = 0;
    int fd = openat(dfd, cname, oflags | O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, mode & 07777);
    if (fd < 0) {
        close(dfd);
        return cr_decline(); /* (a whiteout, the name there: the daemon decides) */
    }
    gid_t owner_gid = (dst.st_mode & S_ISGID) ? dst.st_gid : (gid_t)gid;
    int ok = fchown(fd, (uid_t)uid, owner_gid) == 0 && fchmod(fd, mode & 07777) == 0
             && fstat(fd, &st) == 0;
    uint64_t ino = (uint64_t)st.st_ino | UPPER_ONLY_INO;
    int sent = 0, interrupted = 0;
    pthread_mutex_lock(&lk_lock);
    if (ok && cr_n < CR_PENDING && astrid_fd_set(ino, fd, 1) == 0) {
        /* Queued first: a creation the daemon could not be told of is never sent. */
        struct cr_made *m = &cr_queue[cr_n++];
        memset(m, 0, sizeof *m);
        m->parent = parent;
        m->ino = ino;
        m->generation = (cr_gens += UINT64_C(1) << 32);
        m->mtime_ns = (int64_t)st.st_mtim.tv_sec * 1000000000 + st.st_mtim.tv_nsec;
        m->fd = fd;
        m->nlen = (uint32_t)nlen;
        memcpy(m->name, name, nlen);
        struct cr_reply r;
        lk_fill_entry(&r.entry, ino, &st);
        r.len = sizeof r;
        r.error = 0;
        r.unique = unique;
        r.entry.generation = m->generation;
        r.entry.entry_valid = r.entry.attr_valid = lk_upper_ttl_sec;
        r.entry.entry_valid_nsec = r.entry.attr_valid_nsec = lk_upper_ttl_nsec;
        r.fh = 0;
        r.open_flags = direct && (flags & O_ACCMODE) == O_WRONLY ? PT_FOPEN_DIRECT_IO : 0;
        r.backing_id = 0;
        sent = dev_reply(fuse_fd, &r, sizeof r) >= 0;
        if (!sent) {
            /* not delivered: nothing for the daemon to count, no fd to keep */
            interrupted = errno == ENOENT;
            cr_n--;
            astrid_fd_set(ino, -1, 0);
        } else if ((ur_target_set || dw_worker) && cr_n == CR_PENDING / 2 && !lk_bell_rung) {
            uint64_t one = 1; /* the trio thread absorbs while the rest go on */
            lk_bell_rung = 1;
            (void)!write(ur_fwd_ev, &one, sizeof one);
        }
    }
    pthread_mutex_unlock(&lk_lock);
    if (sent) {
        close(dfd);
        __atomic_add_fetch(&cr_stats[0], 1, __ATOMIC_RELAXED);
        return 1;
    }
    close(fd);
    if (interrupted) {
        /* (the request was interrupted, no answer wanted: the file stays, as
         * the daemon's would, and a later lookup finds it) */
        close(dfd);
        return 1;
    }
    unlinkat(dfd, cname, 0); /* made here, not answered: the daemon makes it again */
    close(dfd);
    return cr_decline();
}

/* Version 34 too: the RELEASE of a CREATE's handle 0. Without passthrough
 * every file a CREATE made (the daemon's or part 22's) is open under handle
 * 0 (no_open: its fd is the inode's own, ops.py `create`), and its close
 * sends a RELEASE that the daemon answers doing nothing (ops.py `release`):
 * a trio turn per file made. Answered here; a real handle stays the
 * daemon's. ABI: fuse_release_in (fh first, 24 bytes) after the header. */
static int rl_try(const struct fuse_buf *buf, int fuse_fd)
{
    uint64_t unique, nodeid, fh;
    const char *mem = pt_enabled ? NULL : raw_request(buf, PT_OPCODE_RELEASE, 24, &unique, &nodeid);
    if (!mem)
        return 0;
    memcpy(&fh, mem + LK_IN_HEADER, 8);
    if (fh != 0)
        return 0;
    struct { uint32_t len; int32_t error; uint64_t unique; } r = { 16, 0, unique };
    (void)!dev_reply(fuse_fd, &r, sizeof r); /* (ENOENT: interrupted; nothing waits on it) */
    __atomic_add_fetch(&rl_stats, 1, __ATOMIC_RELAXED);
    return 1;
}

/* A LOOKUP in a named directory: answered here (1), or left to the daemon. */
static int lk_try_unlocked(const struct fuse_buf *buf, int fuse_fd)
{
    if (!lk_on || (buf->flags & FUSE_BUF_IS_FD) || buf->size <= LK_IN_HEADER)
        return 0;
    const char *mem = buf->mem;
    uint32_t len, opcode;
    uint64_t unique, parent;
    memcpy(&opcode, mem + 4, 4);
    memcpy(&len, mem, 4);
    if (opcode == LK_OPCODE_READDIRPLUS && len <= buf->size) /* (below) */
        return lk_readdirplus(mem, len, fuse_fd);
    if (opcode == LK_OPCODE_GETATTR && len <= buf->size)
        return lk_getattr(mem, fuse_fd);
    if (opcode == LK_OPCODE_LISTXATTR && len <= buf->size)
        return lk_listxattr(mem, len, fuse_fd);
    if (opcode != LK_OPCODE_LOOKUP)
        return 0;
    memcpy(&unique, mem + 8, 8);
    memcpy(&parent, mem + 16, 8);
    if (len > buf->size || len <= LK_IN_HEADER)
        return 0;
    struct lk_dir *d = *lk_slot(parent);
    if (!d && !*lk_updir_slot(parent))
        return 0;
    const char *name = mem + LK_IN_HEADER;
    size_t nlen = strnlen(name, len - LK_IN_HEADER);
    if (nlen == len - LK_IN_HEADER || nlen == 0 || nlen > 255
        || (name[0] == '.' && (nlen == 1 || (nlen == 2 && name[1] == '.'))))
        return lk_decline();
    if (!d)
        return lk_updir_lookup(unique, parent, name, nlen, fuse_fd);
    char path[LK_PATH];
    size_t plen = lk_child_path(path, d, name, nlen);
    if (!plen)
        return lk_decline();
    struct lk_reply r;
    memset(&r, 0, sizeof r);
    r.len = sizeof r;
    r.unique = unique;
    struct stat st;
    uint64_t ino = 0;
    int found = lk_stat_child(path, &st, &ino);
    if (found < 0)
        return lk_decline();
    if (!found)
        return lk_negative(unique, fuse_fd);
    uint8_t type = lk_type(st.st_mode);
    /* Queue first: an entry the daemon could not be told of is never sent. */
    size_t mark = lk_qlen;
    if (lk_queue_entry(parent, ino, type, name, nlen) < 0)
        return lk_decline();
    lk_fill_entry(&r.entry, ino, &st);
    if (dev_reply(fuse_fd, &r, sizeof r) < 0) {
        lk_qlen = mark; /* not delivered: nothing to count */
        if (errno != ENOENT)
            return lk_decline(); /* the daemon answers it */
        return 1; /* ENOENT: the request was interrupted, no answer wanted */
    }
    if (type == 1)
        lk_dir_set(ino, parent, LK_REL(path), LK_REL_LEN(plen));
    else if (type == 0)
        lk_file_sent(ino, LK_REL(path), LK_REL_LEN(plen));
    lk_stats[0]++;
    return 1;
}

static int lk_try(const struct fuse_buf *buf, int fuse_fd)
{
    pthread_mutex_lock(&lk_lock);
    int res = lk_try_unlocked(buf, fuse_fd);
    pthread_mutex_unlock(&lk_lock);
    return res;
}

/*
 * Part 12, listings: a READDIRPLUS of a directory the shim may answer LOOKUPs
 * in is answered here too, with full entries (attributes, the lower TTL),
 * while the daemon's name-only policy (fuse/name_only.py) has asked for full
 * listings (astrid_lk_full: it counts them down, and so do the daemon's own
 * full listings since version 22, astrid_lk_full_take); otherwise the daemon lists
 * (names only, to probe the reader). The listing is the lower directory's
 * names, sorted, behind "." and "..", offsets index + 1, as the daemon lists;
 * taken at offset 0 and kept for the calls that follow. Each full entry sent
 * is queued like a LOOKUP's (the kernel counts a lookup for it). A hard-linked
 * file, an untagged device or an errno other than ENOENT in the part asked
 * for: the whole request goes to the daemon.
 * ABI: fuse_read_in after the header (fh, offset, size, ...); the reply is a
 * run of fuse_direntplus: fuse_entry_out (128), fuse_dirent (ino, off,
 * namelen, type: 24) and the name, padded to 8 bytes.
 */
#include <dirent.h>
#include <stddef.h>

struct lk_listing { uint64_t ino; size_t n; char **names; };
/* Each of a listing's names is the `name` of one of these: getdents' inode
 * number and type beside it (version 19, below). */
struct lk_name { uint64_t d_ino; unsigned char d_type; char name[]; };
#define LK_NAME_OF(p) ((struct lk_name *)((char *)(p) - offsetof(struct lk_name, name)))
static struct lk_listing lk_list;
static int64_t lk_full_left;

void astrid_lk_full(int64_t listings)
{
    pthread_mutex_lock(&lk_lock);
    lk_full_left = listings;
    pthread_mutex_unlock(&lk_lock);
}

/* One full listing taken from the same count (version 22), for a listing the
 * daemon takes itself (a directory not named here, or the shim declined):
 * 1 if the count allowed a full one, else 0. One count for both, so that once
 * the shim has listed its share the daemon probes with names, instead of
 * listing in Python as many full ones again by a count of its own. */
int astrid_lk_full_take(void)
{
    pthread_mutex_lock(&lk_lock);
    int full = lk_full_left > 0;
    if (full)
        lk_full_left--;
    pthread_mutex_unlock(&lk_lock);
    return full;
}

static void lk_list_free(void)
{
    for (size_t i = 0; i < lk_list.n; i++)
        free(LK_NAME_OF(lk_list.names[i]));
    free(lk_list.names);
    memset(&lk_list, 0, sizeof lk_list);
}

static int lk_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The lower directory's names, sorted, as lk_list; 0 or -1. */
static int lk_list_take(uint64_t ino, const struct lk_dir *listed)
{
    lk_list_free();
    char path[LK_PATH];
    if (!lk_abs(path, listed->path, listed->len))
        return -1;
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    DIR *dir = fdopendir(fd);
    if (!dir) {
        close(fd);
        return -1;
    }
    size_t cap = 0;
    struct dirent *d;
    int bad = 0;
    while ((d = readdir(dir)) != NULL) {
        if (d->d_name[0] == '.' && (!d->d_name[1] || (d->d_name[1] == '.' && !d->d_name[2])))
            continue;
        if (lk_list.n == cap) {
            cap = cap ? cap * 2 : 64;
            char **grown = realloc(lk_list.names, cap * sizeof *grown);
            if (!grown) {
                bad = 1;
                break;
            }
            lk_list.names = grown;
        }
        size_t nlen = strlen(d->d_name);
        struct lk_name *rec = malloc(sizeof *rec + nlen + 1);
        if (!rec) {
            bad = 1;
            break;
        }
        rec->d_ino = (uint64_t)d->d_ino;
        rec->d_type = d->d_type;
        memcpy(rec->name, d->d_name, nlen + 1);
        lk_list.names[lk_list.n++] = rec->name;
    }
    closedir(dir);
    if (bad) {
        lk_list_free();
        return -1;
    }
    qsort(lk_list.names, lk_list.n, sizeof *lk_list.names, lk_name_cmp);
    lk_list.ino = ino;
    return 0;
}


struct lk_dirent { uint64_t ino, off; uint32_t namelen, type; };

/* Append one fuse_direntplus at *used; 0, or -1 when it does not fit. */
static int lk_put(char *out, size_t room, size_t *used, const struct lk_entry_out *e,
                  uint64_t ino, uint64_t off, const char *name, size_t nlen, uint32_t type)
{
    size_t need = sizeof *e + sizeof(struct lk_dirent) + ((nlen + 7) & ~(size_t)7);
    if (*used + need > room)
        return -1;
    char *p = out + *used;
    memset(p, 0, need);
    memcpy(p, e, sizeof *e);
    struct lk_dirent d = { ino, off, (uint32_t)nlen, type };
    memcpy(p + sizeof *e, &d, sizeof d);
    memcpy(p + sizeof *e + sizeof d, name, nlen);
    *used += need;
    return 0;
}

#define LK_INO_MASK ((UINT64_C(1) << LK_DEV_SHIFT) - 1)

/* Whether listed regular file `n` at `path` (`plen` bytes) in `dir_ino` is
 * one the shim sent the kernel and the kernel has not forgotten: part 12's
 * file table has its inode (the directory's device tag over getdents' inode
 * number: a file is on its directory's device) under this very path. */
static int lk_held_file(uint64_t dir_ino, const struct lk_name *n, const char *path,
                        size_t plen)
{
    if (n->d_type != DT_REG || n->d_ino > LK_INO_MASK)
        return 0;
    const struct lk_dir *f = *lk_file_slot((dir_ino & ~LK_INO_MASK) | n->d_ino);
    return f && f->len == LK_REL_LEN(plen) && memcmp(f->path, LK_REL(path), f->len) == 0;
}

static int lk_readdirplus(const char *mem, uint32_t len, int fuse_fd)
{
    uint64_t unique, dir_ino, offset;
    uint32_t size;
    if (len < LK_IN_HEADER + 40)
        return 0;
    memcpy(&unique, mem + 8, 8);
    memcpy(&dir_ino, mem + 16, 8);
    memcpy(&offset, mem + LK_IN_HEADER + 8, 8);
    memcpy(&size, mem + LK_IN_HEADER + 16, 4);
    struct lk_dir *d = *lk_slot(dir_ino);
    if (!d)
        return 0;
    if (offset == 0) {
        if (lk_full_left <= 0 || lk_list_take(dir_ino, d) < 0)
            return 0;
    } else if (lk_list.ino != dir_ino || !lk_list.names) {
        return 0; /* the daemon lists (it took the listing at offset 0) */
    }
    static char *out;
    static size_t out_room;
    size_t room = size;
    if (room > (1u << 20))
        room = 1u << 20;
    if (16 + room > out_room) {
        char *grown = realloc(out, 16 + room);
        if (!grown)
            return 0;
        out = grown;
        out_room = 16 + room;
    }
    char *body = out + 16;
    size_t used = 0;
    size_t mark = lk_qlen;
    struct lk_entry_out e;
    size_t total = lk_list.n + 2;
    char path[LK_PATH];
    for (uint64_t i = offset; i < total; i++) {
        memset(&e, 0, sizeof e);
        if (i < 2) { /* "." and "..": listed, no dentry (nodeid 0) */
            uint64_t ino = i == 0 ? dir_ino : d->parent;
            if (lk_put(body, room, &used, &e, ino, i + 1, i == 0 ? "." : "..", i + 1, DT_DIR) < 0)
                break;
            continue;
        }
        const char *name = lk_list.names[i - 2];
        size_t nlen = strlen(name);
        size_t plen = lk_child_path(path, d, name, nlen);
        if (!plen)
            goto decline;
        if (lk_held_file(dir_ino, LK_NAME_OF(name), path, plen)) {
            /* The kernel holds this file already (the shim's own LOOKUP sent
             * it, e.g. git's index refresh before its untracked-file scan):
             * a name-only entry, no lstat, nothing for the daemon to count. */
            uint64_t ino = (dir_ino & ~LK_INO_MASK) | LK_NAME_OF(name)->d_ino;
            if (lk_put(body, room, &used, &e, ino, i + 1, name, nlen, DT_REG) < 0)
                break;
            lk_stats[6]++;
            continue;
        }
        struct stat st;
        uint64_t ino = 0;
        /* (under the lock: the listing and `d` are shared) */
        int found = lk_classify(lstat(path, &st) == 0 ? 0 : errno, &st, &ino);
        if (found < 0)
            goto decline;
        if (!found)
            continue; /* gone since the listing: skipped, as the daemon does */
        lk_fill_entry(&e, ino, &st);
        if (lk_put(body, room, &used, &e, ino, i + 1, name, nlen, (st.st_mode & S_IFMT) >> 12) < 0)
            break;
        uint8_t type = lk_type(st.st_mode);
        if (lk_queue_entry(dir_ino, ino, type, name, nlen) < 0)
            goto decline;
    }
    uint32_t reply_len = (uint32_t)(16 + used);
    int32_t zero = 0;
    memcpy(out, &reply_len, 4);
    memcpy(out + 4, &zero, 4);
    memcpy(out + 8, &unique, 8);
    if (dev_reply(fuse_fd, out, reply_len) < 0) {
        lk_qlen = mark;
        return errno == ENOENT ? 1 : lk_decline();
    }
    /* Name what was sent, as a LOOKUP would. */
    for (size_t off = mark; off < lk_qlen;) {
        uint64_t ino;
        memcpy(&ino, lk_queue + off + 8, 8);
        uint8_t type = (uint8_t)lk_queue[off + 16];
        size_t nlen = (uint8_t)lk_queue[off + 17];
        size_t plen = type == 2 ? 0 : lk_child_path(path, d, lk_queue + off + 18, nlen);
        if (plen && type == 1)
            lk_dir_set(ino, dir_ino, LK_REL(path), LK_REL_LEN(plen));
        else if (plen)
            lk_file_sent(ino, LK_REL(path), LK_REL_LEN(plen));
        off += 18 + nlen;
    }
    if (offset == 0)
        lk_full_left--;
    lk_stats[4]++;
    return 1;
decline:
    lk_qlen = mark;
    if (offset == 0)
        lk_list_free();
    return lk_decline();
}

/*
 * 15. FUSE over io_uring (version 15; off unless the daemon calls
 *     astrid_ur_enable() before it mounts, and the kernel offers it: Linux
 *     6.14+ with /sys/module/fuse/parameters/enable_uring set).
 *     Why: on this project's VMs a request that wakes a thread on the other
 *     CPU costs ~35 us each way (an idle vCPU sleeps in HLT), and /dev/fuse
 *     hands every request to whichever daemon thread waits: 1,000 appends
 *     to upper files took 100 us each, 30 us with the client and the daemon
 *     on one CPU. Over io_uring the kernel queues a request on the ring of
 *     the CPU its caller runs on, so a thread pinned there answers it
 *     without a cross-CPU wake-up.
 *     How: the INIT reply asks for FUSE_OVER_IO_URING (flags2 bit 9); right
 *     after it, queue threads pinned to each possible CPU (version 24:
 *     several per CPU, ur_threads_per_cpu; one before) register that CPU's
 *     UR_ENTRIES ring entries between them (FUSE_IO_URING_CMD_REGISTER,
 *     each from its own ring): a 288-byte header (fuse_in_header, the
 *     opcode's own in-struct, commit id and payload size) and a payload
 *     buffer. Once every queue has entries the kernel sends all requests but
 *     FORGET and INTERRUPT there, each to an idle entry of its caller's CPU:
 *     with one thread per CPU a request that waited on the disk (a cold
 *     LOOKUP or READ) held back every other request of that CPU; now another
 *     thread of the CPU takes it (8 processes reading 20,000 cold files:
 *     2.3-2.5 s before, 0.63-0.74 s after, native 0.53-0.61 s).
 *     A queue thread answers in C what needs no daemon state but the locked
 *     fd table (part 9) and part 12's locked tables: the xattr probes (part
 *     4), READs of inodes in the table and WRITEs of writable ones (not a
 *     WRITE that asks for a suid/sgid kill, part 13), the first READ of a
 *     file part 12 found (version 21: opened here, lk_read_entry), IOCTLs
 *     (ENOTTY), part 12's LOOKUPs and
 *     listings (their entries queued for the daemon's absorb before the
 *     reply goes), and with passthrough (version 20) part 6's OPENs its
 *     table answers and the RELEASEs of the handles it gave out, so an
 *     append to an upper file is one round trip on the caller's CPU (1,000
 *     appends here 20-22 ms against 31-33 ms through the trio thread's drain;
 *     native 10-13). It commits the answer and fetches the next request in one
 *     submission (FUSE_IO_URING_CMD_COMMIT_AND_FETCH).
 *     Everything else is forwarded to pyfuse3's trio thread unchanged: the
 *     request is rebuilt as /dev/fuse would have delivered it and queued;
 *     pyfuse3 waits on an epoll fd (the wrapped fuse_session_fd) that
 *     holds /dev/fuse and an eventfd counting the queue, and the wrapped
 *     fuse_session_receive_buf hands the queue out first, so parts 6, 10,
 *     12 and 14 and the Python handlers see it as before. Its reply (libfuse's
 *     writev, or the shim's own raw writes: dev_write) is matched by its
 *     unique id, copied into the entry, and committed by the entry's queue
 *     thread, woken through its own eventfd (all submissions to a ring come
 *     from its thread, so the kernel's task work runs there).
 *     Kernel ABI (include/uapi/linux/fuse.h, 7.42): the structs below; the
 *     SQE is 128 bytes (IORING_SETUP_SQE128), fuse_uring_cmd_req in its
 *     80-byte command area.
 */
#include <linux/io_uring.h>
#include <sched.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#define UR_FLAG2 (UINT32_C(1) << 9)   /* FUSE_OVER_IO_URING = 1 << 41 */
#define UR_INIT_EXT (UINT32_C(1) << 30)
#define UR_OPCODE_INIT 26
#define UR_CMD_REGISTER 1
#define UR_CMD_COMMIT_AND_FETCH 2
#define UR_ENTRIES 8       /* ring entries per CPU, shared out among its threads */
#define UR_THREADS 8       /* queue threads per CPU (ASTRID_FS_RING_THREADS) */
#define UR_PREFIX 4096     /* room before the payload to rebuild a request */
#define UR_EV_TAG UINT64_MAX
#define UR_MAX_QUEUES 256  /* CPUs */

struct ur_header {
    char in_out[128];  /* fuse_in_header in, fuse_out_header out */
    char op_in[128];   /* the opcode's in-struct (in_args[0]) */
    uint64_t flags, commit_id;
    uint32_t payload_sz, padding;
    uint64_t reserved;
};
struct ur_cmd_req { uint64_t flags, commit_id; uint16_t qid; uint8_t padding[6]; };

enum { UR_FREE, UR_FORWARDED };
struct ur_ent {
    struct ur_header hdr;            /* iov[0] */
    char *mem;                       /* UR_PREFIX bytes, then the payload (iov[1]) */
    struct iovec iov[2];
    int state;                       /* under ur_lock */
    uint64_t unique;
    struct ur_ent *next;             /* the forward or commit list */
};
struct ur_queue {
    int q, ring_fd, ev_fd;
    unsigned *sq_tail, *sq_mask, *sq_array, *cq_head, *cq_tail, *cq_mask;
    struct io_uring_sqe *sqes;
    struct io_uring_cqe *cqes;
    unsigned pending;                /* SQEs filled, not yet submitted */
    uint64_t ev_count;
    struct ur_ent ents[UR_ENTRIES];
    int nents;                       /* this thread's: UR_ENTRIES / threads per CPU */
    struct ur_ent *commits;          /* replied by the trio thread (ur_lock) */
    pid_t tid;                       /* its thread, once started (ur_lock) */
};

static size_t ur_payload, ur_bufsize;
static int ur_nq;                    /* queue threads, all CPUs' */
static struct ur_queue *ur_queues[UR_MAX_QUEUES * UR_THREADS];
static pthread_mutex_t ur_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ur_ent *ur_fwd_head, *ur_fwd_tail;
/* requests from the rings; answered by a queue thread; forwarded; replies
 * committed for the trio thread; failures (a queue not set up, a ring call
 * refused, an entry the kernel turned down); version 35: pinned threads let go
 * of their CPU for large READs, and took it again (ur_loosen); version 36:
 * the threads turned SCHED_IDLE, and turned SCHED_OTHER (ur_watch) */
#define UR_STATS 9
static int64_t ur_stats[UR_STATS];

int astrid_ur_enable(void) { ur_wanted = 1; return 0; }

/* 1 when the INIT reply asked for io_uring and queue threads run. */
int astrid_ur_active(void) { return ur_active; }

void astrid_ur_stats(int64_t *out)
{
    for (int i = 0; i < UR_STATS; i++)
        out[i] = __atomic_load_n(&ur_stats[i], __ATOMIC_RELAXED);
}

static void ur_count(int i) { __atomic_add_fetch(&ur_stats[i], 1, __ATOMIC_RELAXED); }

/* The INIT request (part 15 asked for): did the kernel offer io_uring? */
static void ur_note_init(const struct fuse_buf *buf)
{
    if (!ur_wanted || (buf->flags & FUSE_BUF_IS_FD) || buf->size < 40 + 20)
        return;
    const char *mem = buf->mem;
    uint32_t opcode, minor, flags, flags2 = 0;
    memcpy(&opcode, mem + 4, 4);
    if (opcode != UR_OPCODE_INIT)
        return;
    memcpy(&minor, mem + 40 + 4, 4);
    memcpy(&flags, mem + 40 + 12, 4);
    if (minor >= 36 && (flags & UR_INIT_EXT))
        memcpy(&flags2, mem + 40 + 16, 4);
    ur_armed = (flags2 & UR_FLAG2) != 0;
}

/* ---- the ring of one queue (raw io_uring: no liburing here) ---- */

static int ur_ring_init(struct ur_queue *u, unsigned entries)
{
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    p.flags = IORING_SETUP_SQE128;
    u->ring_fd = (int)syscall(__NR_io_uring_setup, entries, &p);
    if (u->ring_fd < 0)
        return -1;
    size_t sq_sz = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_sz = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    char *sq = mmap(NULL, sq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->ring_fd,
                    IORING_OFF_SQ_RING);
    char *cq = mmap(NULL, cq_sz, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, u->ring_fd,
                    IORING_OFF_CQ_RING);
    void *sqes = mmap(NULL, p.sq_entries * 128u, PROT_READ | PROT_WRITE,
                      MAP_SHARED | MAP_POPULATE, u->ring_fd, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED)
        return -1;
    u->sq_tail = (unsigned *)(sq + p.sq_off.tail);
    u->sq_mask = (unsigned *)(sq + p.sq_off.ring_mask);
    u->sq_array = (unsigned *)(sq + p.sq_off.array);
    u->cq_head = (unsigned *)(cq + p.cq_off.head);
    u->cq_tail = (unsigned *)(cq + p.cq_off.tail);
    u->cq_mask = (unsigned *)(cq + p.cq_off.ring_mask);
    u->cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    u->sqes = sqes;
    return 0;
}

static struct io_uring_sqe *ur_sqe(struct ur_queue *u)
{
    unsigned tail = *u->sq_tail, idx = tail & *u->sq_mask;
    struct io_uring_sqe *s = (struct io_uring_sqe *)((char *)u->sqes + (size_t)idx * 128);
    memset(s, 0, 128);
    u->sq_array[idx] = idx;
    __atomic_store_n(u->sq_tail, tail + 1, __ATOMIC_RELEASE);
    u->pending++;
    return s;
}

static void ur_cmd(struct ur_queue *u, int op, struct ur_ent *e, uint64_t commit_id)
{
    struct io_uring_sqe *s = ur_sqe(u);
    s->opcode = IORING_OP_URING_CMD;
    s->fd = ur_devfd;
    s->cmd_op = (uint32_t)op;
    s->user_data = (uint64_t)(e - u->ents);
    if (op == UR_CMD_REGISTER) {
        s->addr = (uint64_t)(uintptr_t)e->iov;
        s->len = 2;
    }
    struct ur_cmd_req *c = (struct ur_cmd_req *)s->cmd;
    c->qid = (uint16_t)u->q;
    c->commit_id = commit_id;
}

static void ur_arm_ev(struct ur_queue *u)
{
    struct io_uring_sqe *s = ur_sqe(u);
    s->opcode = IORING_OP_READ;
    s->fd = u->ev_fd;
    s->addr = (uint64_t)(uintptr_t)&u->ev_count;
    s->len = sizeof u->ev_count;
    s->user_data = UR_EV_TAG;
}

/* Commit the reply in `e` (out header in hdr.in_out, `n` payload bytes). */
static void ur_commit(struct ur_queue *u, struct ur_ent *e, uint32_t n)
{
    e->hdr.payload_sz = n;
    ur_cmd(u, UR_CMD_COMMIT_AND_FETCH, e, e->hdr.commit_id);
}

static void ur_reply_err(struct ur_queue *u, struct ur_ent *e, uint64_t unique, int err)
{
    struct { uint32_t len; int32_t error; uint64_t unique; } oh = { 16, -err, unique };
    memcpy(e->hdr.in_out, &oh, sizeof oh);
    ur_commit(u, e, 0);
}

static __thread struct ur_queue *ur_target_q;
static __thread struct ur_ent *ur_target_e;

/* Part 12's reply (a whole message: out header first) into the entry being
 * answered, committed with the next fetch. */
static ssize_t ur_target_reply(const void *buf, size_t len)
{
    struct ur_ent *e = ur_target_e;
    if (len < 16 || len - 16 > ur_payload) {
        errno = EIO;
        return -1; /* (part 12 then declines: the request is forwarded) */
    }
    memcpy(e->hdr.in_out, buf, 16);
    memcpy(e->mem + UR_PREFIX, (const char *)buf + 16, len - 16);
    ur_commit(ur_target_q, e, (uint32_t)(len - 16));
    return (ssize_t)len;
}

/* Part 6 from its table alone: an OPEN it cannot answer is not decided
 * here (the decision runs Python: the trio thread's drain makes it). */
static int pt_table_buf(const struct fuse_buf *buf, int fuse_fd)
{
    return pt_drain_buf(buf, fuse_fd, 0);
}

/* `answer`'s (part 6's or part 12's) answer to `req`, its reply written into
 * entry `e` (dev_reply): 1 if committed, 0 to forward. */
static int ur_targeted(struct ur_queue *u, struct ur_ent *e, const char *req, uint32_t len,
                       int (*answer)(const struct fuse_buf *, int))
{
    struct fuse_buf fb;
    memset(&fb, 0, sizeof fb);
    fb.mem = (void *)req;
    fb.size = len;
    ur_target_q = u;
    ur_target_e = e;
    ur_target_set = 1;
    int done = answer(&fb, ur_devfd);
    ur_target_set = 0;
    return done;
}

/* A READ or WRITE (`req`: fuse_in_header first, `len` bytes; a WRITE's data
 * at `wdata`) done here with part 9's fd of its inode (a file part 12 found
 * is opened for its first READ): 1 with the bytes done and the errno (a READ's
 * data at `rdata`, which has `room` bytes), 0 when the daemon must answer it.
 * Used by the queue threads (part 15) and the reading threads (part 16). */
static int fd_request(const char *req, uint32_t len, const char *wdata, char *rdata,
                      uint32_t room, uint32_t *done_out, int *err_out)
{
    uint32_t opcode;
    uint64_t nodeid;
    memcpy(&opcode, req + 4, 4);
    memcpy(&nodeid, req + 16, 8);
    int writing = opcode == DRAIN_WRITE && orig_write_buf;
    int reading = opcode == DRAIN_READ && orig_read;
    if (!(writing || reading) || len < 80)
        return 0;
    /* fuse_write_in / fuse_read_in: fh, offset, size, write_flags / read_flags */
    uint64_t fh, off;
    uint32_t size, flags;
    memcpy(&fh, req + 40, 8);
    memcpy(&off, req + 48, 8);
    memcpy(&size, req + 56, 4);
    memcpy(&flags, req + 60, 4);
    if (fh != 0 && (!(fh & ASTRID_FH_INODE) || (fh & ASTRID_FH_OPEN_REPLY)))
        return 0;
    if (writing && (flags & KP_WRITE_KILL))
        return 0; /* part 13's kill: the drain and the daemon do it */
    if (size > room || (writing && len < 80 + size))
        return 0;
    uint64_t ino = fh ? (fh & ASTRID_FH_INO_MASK) : nodeid;
    /* (a reference: the fd stays open while we use it) */
    struct wf_entry *w = writing ? wf_get_writable(ino) : wf_get(ino);
    if (!w && reading) {
        /* A file part 12 found (version 21): its first READ opens it here,
         * as the drain does, instead of going to the trio thread (a cold
         * `grep -r` sent it 20,000 first READs). */
        w = lk_read_entry(ino);
    }
    if (!w)
        return 0;
    ssize_t got;
    uint32_t done = 0;
    int err = 0;
    if (writing) {
        while (done < size) {
            got = pwrite(w->fd, wdata + done, size - done, (off_t)(off + done));
            if (got < 0 && errno == EINTR)
                continue;
            if (got <= 0) {
                err = got < 0 ? errno : 0;
                break;
            }
            done += (uint32_t)got;
        }
        if (!err || done) {
            wf_count(&wf_stats[0], 1);
            wf_count(&wf_stats[1], done);
        }
    } else {
        ra_follow(w, off, size);
        do
            got = pread(w->fd, rdata, size, (off_t)off);
        while (got < 0 && errno == EINTR);
        if (got < 0)
            err = errno;
        else {
            done = (uint32_t)got;
            wf_count(&wf_stats[2], 1);
            wf_count(&wf_stats[3], got);
        }
    }
    wf_put(w);
    *done_out = done;
    *err_out = err;
    return 1;
}

/* The table that answers a request of `opcode` in the threads that answer
 * in C (parts 15 and 16), or NULL: part 12's LOOKUPs, listings and GETATTRs
 * (under its lock; a request it declines goes to the trio thread, whose part
 * 12 declines it too), and with passthrough part 6's OPENs and RELEASEs from
 * its table (version 20; an OPEN the table cannot answer, a copy-up or a
 * backing to register, is decided by the trio thread's drain: its callback
 * runs Python). */
static int (*c_table(uint32_t opcode))(const struct fuse_buf *, int)
{
    if (opcode == LK_OPCODE_LOOKUP || opcode == LK_OPCODE_READDIRPLUS
        || opcode == LK_OPCODE_GETATTR || opcode == LK_OPCODE_LISTXATTR)
        return lk_try;
    if ((opcode == PT_OPCODE_OPEN || opcode == PT_OPCODE_RELEASE) && pt_enabled)
        return pt_table_buf;
    if (opcode == SA_OPCODE)
        return sa_try; /* part 20 */
    if (opcode == CF_OPCODE)
        return cf_try; /* part 21 */
    if (opcode == CR_OPCODE)
        return cr_try; /* part 22 */
    if (opcode == PT_OPCODE_RELEASE)
        return rl_try; /* part 22 */
    return NULL;
}

/* The errno that answers `req` outright, or 0: IOCTLs (ENOTTY) and the xattr
 * probes part 4 answers (the capability probe ENODATA, SELinux and ACLs
 * EOPNOTSUPP). */
static int c_errno(const char *req, uint32_t len, uint32_t opcode)
{
    if (opcode == DRAIN_IOCTL)
        return ENOTTY;
    if (xattr_refused(req, len, opcode))
        return EOPNOTSUPP;
    if (opcode != DRAIN_GETXATTR || len <= 48 || !orig_getxattr)
        return 0;
    const char *name = req + 48;
    if (!memchr(name, 0, len - 48))
        return 0;
    if (strcmp(name, "security.capability") == 0) {
        __atomic_add_fetch(&kp_stats[3], 1, __ATOMIC_RELAXED);
        return ENODATA;
    }
    if (xattr_unsupported(name))
        return EOPNOTSUPP;
    return 0;
}

/* Answer `e`'s request here if nothing but the fd table is needed: 1 if
 * committed. `req` is the rebuilt request (fuse_in_header first). */
static int ur_answer(struct ur_queue *u, struct ur_ent *e, const char *req, uint32_t len)
{
    uint32_t opcode;
    uint64_t unique;
    memcpy(&opcode, req + 4, 4);
    memcpy(&unique, req + 8, 8);
    int (*table)(const struct fuse_buf *, int) = c_table(opcode);
    if (table)
        return ur_targeted(u, e, req, len, table); /* its reply goes to this entry */
    int probe = c_errno(req, len, opcode);
    if (probe) {
        ur_reply_err(u, e, unique, probe);
        return 1;
    }
    uint32_t done;
    int err;
    char *payload = e->mem + UR_PREFIX;
    if (!fd_request(req, len, payload, payload, ur_payload, &done, &err))
        return 0;
    if (err && !done) {
        ur_reply_err(u, e, unique, err);
        return 1;
    }
    uint32_t n = done;
    if (opcode == DRAIN_WRITE) {
        struct { uint32_t size, padding; } wo = { done, 0 };
        memcpy(payload, &wo, sizeof wo); /* the data is written: reuse its room */
        n = sizeof wo;
    }
    struct { uint32_t len; int32_t error; uint64_t unique; } oh = { 16 + n, 0, unique };
    memcpy(e->hdr.in_out, &oh, sizeof oh);
    ur_commit(u, e, n);
    return 1;
}

/* A request has arrived in `e`: answer it here, or rebuild it contiguous
 * (header, in-struct, payload) just before the payload and forward it. */
static void ur_loosen(const char *req);

static void ur_arrived(struct ur_queue *u, struct ur_ent *e)
{
    uint32_t len, payload_sz = e->hdr.payload_sz;
    uint64_t unique;
    memcpy(&len, e->hdr.in_out, 4);
    memcpy(&unique, e->hdr.in_out + 8, 8);
    if (len < 40 || len - 40 < payload_sz || len - 40 - payload_sz > sizeof e->hdr.op_in
        || payload_sz > ur_payload) {
        ur_reply_err(u, e, unique, EIO);
        return;
    }
    uint32_t arg0 = len - 40 - payload_sz;
    char *req = e->mem + UR_PREFIX - 40 - arg0;
    memcpy(req, e->hdr.in_out, 40);
    memcpy(req + 40, e->hdr.op_in, arg0);
    ur_count(0);
    ur_loosen(req);
    if (ur_answer(u, e, req, len)) {
        ur_count(1);
        return;
    }
    pthread_mutex_lock(&ur_lock);
    e->state = UR_FORWARDED;
    e->unique = unique;
    FWD_PUT(ur_fwd_head, ur_fwd_tail, e);
    pthread_mutex_unlock(&ur_lock);
    ur_count(2);
    uint64_t one = 1;
    (void)!write(ur_fwd_ev, &one, sizeof one);
}

/*
 * Version 19: the queue threads run under SCHED_IDLE (`ASTRID_FS_RING_IDLE=0`:
 * SCHED_OTHER). Why: the kernel wakes a FUSE caller from the thread that
 * commits its reply, and the scheduler puts a woken task on the waker's CPU
 * only when that CPU is idle or runs nothing but SCHED_IDLE tasks
 * (select_idle_sibling, sched_idle_cpu); otherwise it takes the idle CPU,
 * which on these VMs is halted: an IPI and a vCPU wake-up per reply, and the
 * caller's next request lands on the other ring. Under SCHED_IDLE the caller
 * stays on its CPU, which then serves it: a pipe ping-pong here costs 3 us
 * so against 11-16 us across CPUs, 1,000 appends 11-18 ms against 21-48 ms.
 * The thread runs whenever its CPU has nothing else to run, which is when
 * its caller waits; under CPU hogs on every CPU, writes measured the same
 * latencies (median 11-13 us, worst 5-12 ms) as SCHED_OTHER queue threads.
 *
 * Version 23: SCHED_OTHER again by default (`ASTRID_FS_RING_IDLE=1` asks for
 * SCHED_IDLE). Appends do not show it, but a request whose answer waits on
 * the disk does: the queue thread wakes from the read into a CPU a busy task
 * holds, and under SCHED_IDLE waits out that task's slice. A cold `grep -r`
 * over 20,000 files with a busy loop on every CPU (a build beside the agent's
 * reads) took 50-58 s under SCHED_IDLE, 2.3 s under SCHED_OTHER, 5.0 s over
 * /dev/fuse and 2.0 s native (2026-12-03 23:19, benchmarks.md "Busy CPUs").
 */
enum { UR_CLASS_OTHER, UR_CLASS_IDLE, UR_CLASS_AUTO };

/*
 * Version 36: by default the class follows the machine (ur_watch): SCHED_IDLE
 * while no task waits for a CPU, SCHED_OTHER while one does. Both reasons
 * above hold at once only on a busy machine, and the kernel says when it is
 * one: its CPU pressure (PSI, /proc/pressure/cpu, "some": time in which a
 * runnable task waited for a CPU). A watching thread reads it every
 * UR_WATCH_MS; an interval with UR_BUSY_PCT or more makes every queue thread
 * SCHED_OTHER at once, UR_QUIET_TICKS intervals in a row under UR_QUIET_PCT
 * make them SCHED_IDLE again. A mount's own round trips keep the pressure
 * low (1,000 appends: 2-3 %; a caller and its queue thread take turns); a
 * busy loop on every CPU keeps it near 100 %; git status' 20 preload threads
 * make it 57-78 %, which the threads then answer as ordinary threads, as
 * before. They start SCHED_OTHER. Without PSI (CONFIG_PSI off, psi=0), or
 * where a thread of the daemon cannot come back from SCHED_IDLE (not root,
 * and RLIMIT_NICE too low), they stay SCHED_OTHER.
 * ASTRID_FS_RING_IDLE=1 / =0 fix the class (no watching thread);
 * ASTRID_FS_RING_PRESSURE reads another file in PSI's format instead (tests).
 */
static int ur_class_mode(void)
{
    const char *env = getenv("ASTRID_FS_RING_IDLE");
    if (env && strcmp(env, "1") == 0)
        return UR_CLASS_IDLE;
    if (env && strcmp(env, "0") == 0)
        return UR_CLASS_OTHER;
    return UR_CLASS_AUTO;
}

#define UR_WATCH_MS 50
#define UR_BUSY_PCT 25
#define UR_QUIET_PCT 10
#define UR_QUIET_TICKS 8
static int ur_idle_now;  /* the queue threads' class: 1 SCHED_IDLE (ur_lock) */
static int ur_live;      /* queue threads serving (atomic) */

static int ur_set_class(pid_t tid, int idle)
{
    struct sched_param none = { 0 };
    return sched_setscheduler(tid, idle ? SCHED_IDLE : SCHED_OTHER, &none);
}

/* Every queue thread to SCHED_IDLE (idle) or SCHED_OTHER; threads starting
 * meanwhile take the class from ur_idle_now under the same lock. */
static void ur_apply_class(int idle)
{
    pthread_mutex_lock(&ur_lock);
    ur_idle_now = idle;
    for (int q = 0; q < ur_nq; q++)
        if (ur_queues[q] && ur_queues[q]->tid)
            ur_set_class(ur_queues[q]->tid, idle);
    pthread_mutex_unlock(&ur_lock);
    ur_count(idle ? 7 : 8);
}

/* The "some" line's total (microseconds a task waited for a CPU), or -1. */
static int64_t ur_pressure_us(const char *path)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[256];
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *nl = strchr(buf, '\n');
    char *total = strstr(buf, "total=");
    if (strncmp(buf, "some ", 5) != 0 || !total || (nl && total > nl))
        return -1;
    return strtoll(total + 6, NULL, 10);
}

static void *ur_watch(void *arg)
{
    (void)arg;
    pthread_setname_np(pthread_self(), "astrid-cpuwatch");
    const char *path = getenv("ASTRID_FS_RING_PRESSURE");
    if (!path || !*path)
        path = "/proc/pressure/cpu";
    /* Can a thread of ours come back from SCHED_IDLE? (Unprivileged, only
     * within RLIMIT_NICE.) Tried on this thread, which then stays ordinary. */
    if (ur_set_class(0, 1) != 0 || ur_set_class(0, 0) != 0)
        return NULL;
    struct timespec at;
    clock_gettime(CLOCK_MONOTONIC, &at);
    int64_t was = ur_pressure_us(path);
    if (was < 0)
        return NULL;
    int quiet = 0, idle = 0;
    while (__atomic_load_n(&ur_live, __ATOMIC_ACQUIRE) > 0) {
        struct timespec tick = { 0, UR_WATCH_MS * 1000000L };
        nanosleep(&tick, NULL);
        int64_t now = ur_pressure_us(path);
        long took = drain_us_since(&at);
        if (now < 0 || took <= 0) {
            if (idle)
                ur_apply_class(idle = 0); /* (the file went: ordinary, and stay) */
            return NULL;
        }
        clock_gettime(CLOCK_MONOTONIC, &at);
        int64_t pct = (now - was) * 100 / took;
        was = now;
        if (pct >= UR_BUSY_PCT) {
            quiet = 0;
            if (idle)
                ur_apply_class(idle = 0);
        } else if (pct >= UR_QUIET_PCT) {
            quiet = 0;
        } else if (++quiet >= UR_QUIET_TICKS && !idle) {
            ur_apply_class(idle = 1);
        }
    }
    return NULL;
}

/* Version 29: ASTRID_FS_RING_PIN=0 leaves the queue threads unpinned. The
 * kernel queues a request on the ring of its caller's CPU, so pinned threads
 * answer it there: a LOOKUP's round trip stays on one CPU (a cold `git
 * status` 104-130 ms pinned, 119-175 unpinned), but a sequential reader, its
 * queue threads' preads and the kernel's copies then share that one CPU (a
 * cold 1 GiB read 574-593 ms pinned, 466-490 unpinned; a cold `grep -r`
 * 2.38-2.77 s against 2.02-2.43; benchmarks.md, "Pinned queue threads"). */
static int ur_pinned(void)
{
    const char *env = getenv("ASTRID_FS_RING_PIN");
    return !env || strcmp(env, "0") != 0;
}

/* Version 35: a pinned queue thread lets go of its CPU while it answers large
 * READs (UR_LOOSE_READ and up: a sequential reader's read-ahead) and takes it
 * again at its next other request. The reader's READs keep arriving on its
 * CPU's ring, but the thread that answers them may then run on another CPU
 * (the scheduler wakes it where a CPU idles), so the pread into the ring
 * entry and the kernel's copy out of it at the commit no longer share the
 * reader's CPU, while LOOKUPs, GETATTRs and small writes stay where their
 * caller runs. ur_home: the thread's CPU set when pinned, ur_wide: the one it
 * started with (the process's: a cpuset is kept). */
#define UR_LOOSE_READ (128u * 1024)
static __thread cpu_set_t ur_home, ur_wide;
static __thread int ur_homed;  /* 1: pinned to ur_home now; 0: not pinned */
static __thread int ur_can_loosen;

/* ASTRID_FS_RING_LOOSE_READS=0: pinned threads stay pinned for every request. */
static int ur_loose_reads(void)
{
    const char *env = getenv("ASTRID_FS_RING_LOOSE_READS");
    return !env || strcmp(env, "0") != 0;
}

static void ur_loosen(const char *req)
{
    if (!ur_can_loosen)
        return;
    uint32_t opcode, size = 0;
    memcpy(&opcode, req + 4, 4);
    if (opcode == DRAIN_READ)
        memcpy(&size, req + 40 + 16, 4); /* fuse_read_in: fh, offset, size */
    int loose = opcode == DRAIN_READ && size >= UR_LOOSE_READ;
    if (loose == !ur_homed)
        return;
    if (pthread_setaffinity_np(pthread_self(), sizeof(cpu_set_t), loose ? &ur_wide : &ur_home)
        == 0) {
        ur_homed = !loose;
        ur_count(loose ? 5 : 6);
    }
}

static void *ur_serve(void *arg)
{
    struct ur_queue *u = arg;
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(u->q, &set);
    if (ur_pinned() /* (an offline CPU: unpinned) */
        && pthread_getaffinity_np(pthread_self(), sizeof ur_wide, &ur_wide) == 0
        && pthread_setaffinity_np(pthread_self(), sizeof set, &set) == 0) {
        ur_home = set;
        ur_homed = 1;
        ur_can_loosen = CPU_COUNT(&ur_wide) > 1 && ur_loose_reads();
    }
    char name[16];
    snprintf(name, sizeof name, "astrid-ring%d", u->q);
    pthread_setname_np(pthread_self(), name); /* (ps -L, and the conformance scripts) */
    pthread_mutex_lock(&ur_lock);
    u->tid = (pid_t)syscall(SYS_gettid);
    if (ur_idle_now)
        ur_set_class(0, 1);
    pthread_mutex_unlock(&ur_lock);
    for (int i = 0; i < u->nents; i++)
        ur_cmd(u, UR_CMD_REGISTER, &u->ents[i], 0);
    ur_arm_ev(u);
    for (;;) {
        unsigned submit = u->pending;
        u->pending = 0;
        int rc = (int)syscall(__NR_io_uring_enter, u->ring_fd, submit, 1,
                              IORING_ENTER_GETEVENTS, NULL, 0);
        if (rc < 0 && errno != EINTR && errno != EAGAIN && errno != EBUSY) {
            ur_count(4);
            return NULL;
        }
        unsigned head = *u->cq_head;
        unsigned tail = __atomic_load_n(u->cq_tail, __ATOMIC_ACQUIRE);
        int gone = 0;
        for (; head != tail; head++) {
            struct io_uring_cqe *c = &u->cqes[head & *u->cq_mask];
            if (c->user_data == UR_EV_TAG) {
                pthread_mutex_lock(&ur_lock);
                struct ur_ent *list = u->commits;
                u->commits = NULL;
                pthread_mutex_unlock(&ur_lock);
                for (; list; list = list->next)
                    ur_cmd(u, UR_CMD_COMMIT_AND_FETCH, list, list->hdr.commit_id);
                ur_arm_ev(u);
                continue;
            }
            if (c->user_data >= (uint64_t)u->nents)
                continue;
            if (c->res < 0) {
                if (c->res == -ENOTCONN || c->res == -ENODEV || c->res == -ECANCELED)
                    gone = 1; /* the connection went (unmounted, aborted) */
                else
                    ur_count(4); /* this entry is lost (a refused REGISTER: no ring
                                  * here, and requests keep using /dev/fuse) */
                continue;
            }
            ur_arrived(u, &u->ents[c->user_data]);
        }
        __atomic_store_n(u->cq_head, head, __ATOMIC_RELEASE);
        if (gone)
            return NULL;
    }
}

static void *ur_thread(void *arg)
{
    struct ur_queue *u = arg;
    void *r = ur_serve(u);
    pthread_mutex_lock(&ur_lock);
    u->tid = 0; /* (a thread id the kernel may give another thread next) */
    pthread_mutex_unlock(&ur_lock);
    __atomic_sub_fetch(&ur_live, 1, __ATOMIC_RELEASE);
    return r;
}

/* How many queues the kernel makes: one per possible CPU. */
static int ur_possible_cpus(void)
{
    int n = 0;
    FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
    if (f) {
        int a, b;
        int k = fscanf(f, "%d-%d", &a, &b);
        n = k == 2 ? b + 1 : k == 1 ? a + 1 : 0;
        fclose(f);
    }
    return n > 0 && n <= UR_MAX_QUEUES ? n : 0;
}

/* A detached thread running fn(arg) on a small stack (the queue threads and
 * part 16's: their deepest frame is part 12's with a PATH_MAX buffer): 0, or
 * pthread_create's error. */
static int spawn_detached(void *(*fn)(void *), void *arg)
{
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 256 * 1024);
    int err = pthread_create(&t, &a, fn, arg);
    pthread_attr_destroy(&a);
    return err;
}

/* Queue threads per CPU: ASTRID_FS_RING_THREADS (1 to UR_THREADS), else as
 * many as keep UR_ALL_THREADS in all (at least one per CPU, at most
 * UR_THREADS): what more threads buy is requests waiting on the disk side by
 * side, which a few dozen cover, and each thread holds two fds (its ring and
 * its eventfd) and 1/UR_THREADS of its CPU's entries. */
#define UR_ALL_THREADS 32
static int ur_threads_per_cpu(int cpus)
{
    const char *env = getenv("ASTRID_FS_RING_THREADS");
    int n = env ? atoi(env) : UR_ALL_THREADS / cpus;
    return n < 1 ? 1 : n > UR_THREADS ? UR_THREADS : n;
}

/* Right after the INIT reply went: the queue threads, each pinned to its
 * queue's CPU, each with its own ring and its share of the CPU's entries. */
static void ur_start(void)
{
    int cpus = ur_possible_cpus();
    if (!cpus)
        return;
    int per = ur_threads_per_cpu(cpus);
    int mode = ur_class_mode();
    ur_idle_now = mode == UR_CLASS_IDLE;
    for (int t = 0; t < cpus * per; t++) {
        struct ur_queue *u = calloc(1, sizeof *u);
        if (!u)
            goto fail;
        u->q = t / per;
        u->nents = UR_ENTRIES / per;
        if (ur_ring_init(u, 4 * UR_ENTRIES) < 0)
            goto fail;
        u->ev_fd = eventfd(0, EFD_CLOEXEC);
        for (int i = 0; i < u->nents; i++) {
            struct ur_ent *e = &u->ents[i];
            e->mem = al_alloc(UR_PREFIX + ur_payload, UR_PREFIX); /* (never freed) */
            if (!e->mem)
                goto fail;
            e->iov[0] = (struct iovec){ &e->hdr, sizeof e->hdr };
            e->iov[1] = (struct iovec){ e->mem + UR_PREFIX, ur_payload };
        }
        ur_queues[t] = u;
        ur_nq = t + 1;
        __atomic_add_fetch(&ur_live, 1, __ATOMIC_RELEASE);
        if (u->ev_fd < 0 || spawn_detached(ur_thread, u) != 0) {
            __atomic_sub_fetch(&ur_live, 1, __ATOMIC_RELEASE);
            goto fail;
        }
    }
    if (mode == UR_CLASS_AUTO)
        spawn_detached(ur_watch, NULL); /* (none: the threads stay ordinary) */
    return;
fail:
    /* Some queues have no thread: the ring never becomes ready and every
     * request keeps coming through /dev/fuse. */
    ur_count(4);
}

/* The INIT reply (ur_armed): ask for io_uring; note the payload size the
 * kernel will insist on (max(8 KiB, max_write, max_pages pages)). */
static void ur_patch_init(unsigned char *payload)
{
    uint32_t flags, flags2, max_write;
    uint16_t max_pages;
    memcpy(&flags, payload + 12, 4);
    memcpy(&max_write, payload + 20, 4);
    memcpy(&max_pages, payload + 28, 2);
    memcpy(&flags2, payload + 32, 4);
    flags |= UR_INIT_EXT;
    flags2 |= UR_FLAG2;
    memcpy(payload + 12, &flags, 4);
    memcpy(payload + 32, &flags2, 4);
    size_t pages = (size_t)max_pages * 4096;
    ur_payload = max_write > pages ? max_write : pages;
    if (ur_payload < 8192)
        ur_payload = 8192;
    ur_bufsize = (size_t)max_write + 8192; /* libfuse's own: max_write + 4 KiB */
}

/* A reply to /dev/fuse: if it answers a forwarded ring request, it goes
 * to that entry. Returns the bytes taken, or -1 when it is not one. */
static ssize_t ur_take_reply(int fd, const struct iovec *iov, int iovcnt)
{
    if (!ur_active || fd != ur_devfd || iovcnt < 1 || iov[0].iov_len < 16)
        return -1;
    uint64_t unique;
    memcpy(&unique, (const char *)iov[0].iov_base + 8, 8);
    if (unique == 0)
        return -1; /* a notification */
    pthread_mutex_lock(&ur_lock);
    struct ur_ent *e = NULL;
    struct ur_queue *u = NULL;
    for (int q = 0; q < ur_nq && !e; q++) {
        struct ur_queue *c = ur_queues[q];
        for (int i = 0; c && i < c->nents; i++)
            if (c->ents[i].state == UR_FORWARDED && c->ents[i].unique == unique) {
                e = &c->ents[i];
                u = c;
                break;
            }
    }
    if (!e) {
        pthread_mutex_unlock(&ur_lock);
        return -1;
    }
    e->state = UR_FREE; /* (its queue thread waits for the commit below) */
    pthread_mutex_unlock(&ur_lock);
    /* out header (16 bytes), then the payload, wherever the iovecs split */
    size_t total = 0, at = 0;
    char *payload = e->mem + UR_PREFIX;
    int too_big = 0;
    for (int i = 0; i < iovcnt; i++) {
        const char *p = iov[i].iov_base;
        size_t n = iov[i].iov_len;
        total += n;
        while (n) {
            if (at < 16) {
                size_t k = n < 16 - at ? n : 16 - at;
                memcpy(e->hdr.in_out + at, p, k);
                at += k, p += k, n -= k;
            } else {
                if (at - 16 + n > ur_payload) {
                    too_big = 1;
                    break;
                }
                memcpy(payload + at - 16, p, n);
                at += n, n = 0;
            }
        }
    }
    uint32_t n = (uint32_t)(at - 16);
    if (too_big) {
        struct { uint32_t len; int32_t error; uint64_t unique; } oh = { 16, -EIO, unique };
        memcpy(e->hdr.in_out, &oh, sizeof oh);
        n = 0;
    }
    e->hdr.payload_sz = n;
    pthread_mutex_lock(&ur_lock);
    e->next = u->commits;
    u->commits = e;
    pthread_mutex_unlock(&ur_lock);
    ur_count(3);
    uint64_t one = 1;
    (void)!write(u->ev_fd, &one, sizeof one);
    return (ssize_t)total;
}

static ssize_t dev_write(int fd, const void *buf, size_t len)
{
    struct iovec iov = { (void *)buf, len };
    ssize_t res = ur_take_reply(fd, &iov, 1);
    return res >= 0 ? res : write(fd, buf, len);
}

/* `out` = the head of a forward queue (`head`, `tail`: part 15's entries or
 * part 16's copies, under ur_lock), or NULL. The eventfd is a doorbell:
 * zeroed first, rung again if requests stay queued; whoever queues rings
 * after it queues. Then a request is never queued with the bell silent, and
 * a bell never rings for nothing twice. */
#define FWD_TAKE(head, tail, out)                                \
    do {                                                         \
        uint64_t count_, one_ = 1;                               \
        (void)!read(ur_fwd_ev, &count_, sizeof count_);          \
        pthread_mutex_lock(&ur_lock);                            \
        (out) = (head);                                          \
        if (out) {                                               \
            (head) = (out)->next;                                \
            if (!(head))                                         \
                (tail) = NULL;                                   \
        }                                                        \
        int more_ = (head) != NULL;                              \
        pthread_mutex_unlock(&ur_lock);                          \
        if (more_)                                               \
            (void)!write(ur_fwd_ev, &one_, sizeof one_);         \
    } while (0)

/* The next forwarded request into `buf` (libfuse's buffer, or one sized as
 * libfuse sizes it): its length, or 0 when none waits. */
static int ur_pop(struct fuse_buf *buf)
{
    if (!ur_active)
        return 0;
    struct ur_ent *e;
    FWD_TAKE(ur_fwd_head, ur_fwd_tail, e);
    if (!e)
        return 0;
    uint32_t len, payload_sz = e->hdr.payload_sz;
    memcpy(&len, e->hdr.in_out, 4);
    if (!buf->mem) {
        buf->mem = malloc(ur_bufsize);
        if (!buf->mem)
            return 0; /* (the request waits for its reply forever: ENOMEM) */
    }
    const char *req = e->mem + UR_PREFIX - (len - payload_sz);
    memcpy(buf->mem, req, len);
    buf->size = len;
    buf->flags = 0;
    buf->pos = 0;
    return (int)len;
}

/* pyfuse3 waits on this fd for requests: with io_uring asked for, an epoll
 * fd over /dev/fuse and the forwarded queue's eventfd. */
int fuse_session_fd(struct fuse_session *se)
{
    static int (*real)(struct fuse_session *);
    if (!real)
        real = (int (*)(struct fuse_session *))libfuse_symbol("fuse_session_fd");
    int fd = real ? real(se) : -1;
    if (!(ur_wanted || dw_wanted) || fd < 0)
        return fd;
    if (ur_epfd < 0) {
        ur_devfd = fd;
        ur_fwd_ev = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
        ur_epfd = epoll_create1(EPOLL_CLOEXEC);
        struct epoll_event a = { .events = EPOLLIN, .data.fd = fd };
        struct epoll_event b = { .events = EPOLLIN, .data.fd = ur_fwd_ev };
        if (ur_fwd_ev < 0 || ur_epfd < 0 || epoll_ctl(ur_epfd, EPOLL_CTL_ADD, fd, &a) < 0
            || epoll_ctl(ur_epfd, EPOLL_CTL_ADD, ur_fwd_ev, &b) < 0) {
            ur_wanted = dw_wanted = 0;
            return fd;
        }
    }
    return fd == ur_devfd ? ur_epfd : fd;
}

/*
 * 16. Threads reading /dev/fuse (version 25; asked for with
 *     ASTRID_FS_DEV_THREADS=N, and only where part 15 does not run: a kernel
 *     without FUSE over io_uring, before 6.14, such as Debian 12's and 13's,
 *     or --no-io-uring).
 *     Why: over /dev/fuse every request comes to pyfuse3's one trio thread,
 *     whose drain (part 10) answers what C can one at a time, so a request
 *     waiting on the disk (a cold LOOKUP, a cold READ) holds back every other
 *     one: 8 threads reading 20,000 cold files took 4.7 times native's time.
 *     Why not by default: a client's stream of requests (a stat walk, git
 *     status) then wakes a sleeping thread per request, often on the other
 *     CPU, where the drain's one spinning thread finds the next request
 *     running: stat cold measured 3.3x native against 2.3x (a thread that
 *     spins after its answer, one at a time, made it worse: the kernel wakes
 *     a sleeping reader anyway). benchmarks.md, "/dev/fuse read by threads".
 *     How: once INIT is answered, N threads read /dev/fuse (the
 *     session's own fd, so a reply written on it by anyone matches) and
 *     answer what part 15's queue threads answer (c_table, c_errno,
 *     fd_request), replying on the fd; the rest is copied to a queue that
 *     the trio thread's wrapped fuse_session_receive_buf hands out first,
 *     as part 15 forwards ring requests, so parts 6, 10, 12 and 14 and every
 *     handler see it as before. The trio thread then never reads /dev/fuse
 *     (its epoll fd no longer holds it) until a thread finds the connection
 *     gone, when its own read hands libfuse the error that ends the loop.
 */
#define DW_MAX 64                      /* threads */
#define DW_BUF (256 * 4096 + 8192)     /* libfuse's: 256 pages, and a header */
struct dw_req { struct dw_req *next; uint32_t len; char data[]; };
static struct dw_req *dw_head, *dw_tail; /* under ur_lock */
static int64_t dw_stats[3];             /* requests read, answered here, forwarded */

int astrid_dw_enable(int threads) { dw_wanted = threads > 0 ? threads : 0; return 0; }

/* How many threads read /dev/fuse (0 until INIT is answered without io_uring). */
int astrid_dw_active(void) { return dw_active; }

void astrid_dw_stats(int64_t *out)
{
    for (int i = 0; i < 3; i++)
        out[i] = __atomic_load_n(&dw_stats[i], __ATOMIC_RELAXED);
}

/* A reply on the session's fd: the out header, then `n` bytes at `data`. */
static void dw_reply(uint64_t unique, int err, const void *data, uint32_t n)
{
    struct { uint32_t len; int32_t error; uint64_t unique; } oh = { 16 + n, -err, unique };
    struct iovec iov[2] = { { &oh, sizeof oh }, { (void *)data, n } };
    (void)!writev(ur_devfd, iov, n ? 2 : 1); /* (ENOENT: the caller was interrupted) */
}

/* Answer `req` here (1) or not (0): what a queue thread would answer. */
static int dw_answer(char *req, uint32_t len, char *out, uint32_t room)
{
    uint32_t opcode;
    uint64_t unique;
    memcpy(&opcode, req + 4, 4);
    memcpy(&unique, req + 8, 8);
    int (*table)(const struct fuse_buf *, int) = c_table(opcode);
    if (table) {
        struct fuse_buf fb;
        memset(&fb, 0, sizeof fb);
        fb.mem = req;
        fb.size = len;
        return table(&fb, ur_devfd);
    }
    int probe = c_errno(req, len, opcode);
    if (probe) {
        dw_reply(unique, probe, NULL, 0);
        return 1;
    }
    uint32_t done;
    int err;
    if (!fd_request(req, len, req + 80, out, room, &done, &err))
        return 0;
    if (err && !done) {
        dw_reply(unique, err, NULL, 0);
    } else if (opcode == DRAIN_WRITE) {
        struct { uint32_t size, padding; } wo = { done, 0 };
        dw_reply(unique, 0, &wo, sizeof wo);
    } else {
        dw_reply(unique, 0, out, done);
    }
    return 1;
}

static void dw_forward(const char *req, uint32_t len)
{
    struct dw_req *r = malloc(sizeof *r + len);
    if (!r)
        return; /* (the request waits for its reply forever: ENOMEM) */
    r->len = len;
    memcpy(r->data, req, len);
    pthread_mutex_lock(&ur_lock);
    FWD_PUT(dw_head, dw_tail, r);
    pthread_mutex_unlock(&ur_lock);
    __atomic_add_fetch(&dw_stats[2], 1, __ATOMIC_RELAXED);
    uint64_t one = 1;
    (void)!write(ur_fwd_ev, &one, sizeof one);
}

static void *dw_thread(void *arg)
{
    (void)arg;
    dw_worker = 1;
    pthread_setname_np(pthread_self(), "astrid-dev");
    /* the kernel insists on room for max_write: EINVAL grows the buffer */
    size_t size = DW_BUF;
    /* (a WRITE's data starts 80 bytes in: aligned there; a READ's reply data at 0) */
    char *buf = al_alloc(size, 80), *out = al_alloc(size, 0);
    for (;;) {
        if (!buf || !out)
            break;
        ssize_t n = read(ur_devfd, buf, size);
        if (n < 0) {
            if (errno == EINTR || errno == ENOENT)
                continue; /* (ENOENT: a request interrupted before it was read) */
            if (errno == EAGAIN) {
                struct pollfd p = { .fd = ur_devfd, .events = POLLIN };
                (void)poll(&p, 1, -1);
                continue;
            }
            if (errno == EINVAL && size < (64u << 20)) {
                size *= 2;
                al_free(buf, 80);
                al_free(out, 0);
                buf = al_alloc(size, 80);
                out = al_alloc(size, 0);
                continue;
            }
            break; /* ENODEV: unmounted, or aborted */
        }
        __atomic_add_fetch(&dw_stats[0], 1, __ATOMIC_RELAXED);
        if (n < 40)
            continue;
        if (dw_answer(buf, (uint32_t)n, out, (uint32_t)(size - 16))) {
            __atomic_add_fetch(&dw_stats[1], 1, __ATOMIC_RELAXED);
            continue;
        }
        dw_forward(buf, (uint32_t)n);
    }
    al_free(buf, 80);
    al_free(out, 0);
    dw_gone = 1; /* the trio thread reads the fd itself now: libfuse sees the end */
    uint64_t one = 1;
    (void)!write(ur_fwd_ev, &one, sizeof one);
    return NULL;
}

/* INIT is answered: the threads start, and the trio thread stops waiting on
 * /dev/fuse (pyfuse3 waits on the epoll fd, which then holds the queue's
 * eventfd only). */
static void dw_start(void)
{
    if (ur_epfd < 0 || ur_devfd < 0)
        return;
    int started = 0;
    for (int i = 0; i < dw_wanted && i < DW_MAX; i++)
        started += spawn_detached(dw_thread, NULL) == 0;
    if (!started)
        return; /* the trio thread reads /dev/fuse as before */
    dw_active = started;
    epoll_ctl(ur_epfd, EPOLL_CTL_DEL, ur_devfd, NULL);
}

/* The next forwarded request into `buf` (libfuse's, or one sized as libfuse
 * sizes it): its length, or 0 when none waits. */
static int dw_pop(struct fuse_buf *buf)
{
    struct dw_req *r;
    FWD_TAKE(dw_head, dw_tail, r);
    if (!r)
        return 0;
    if (!buf->mem) {
        buf->mem = malloc(r->len > DW_BUF ? r->len : DW_BUF);
        if (!buf->mem) {
            free(r);
            return 0;
        }
    }
    memcpy(buf->mem, r->data, r->len);
    buf->size = r->len;
    buf->flags = 0;
    buf->pos = 0;
    int len = (int)r->len;
    free(r);
    return len;
}
