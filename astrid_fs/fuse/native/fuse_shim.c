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
 *    EOPNOTSUPP for labels and ACLs (which ls(1) caches per device).
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
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#include <errno.h>
#include <string.h>
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

#define ASTRID_FH_CACHE_DIR  (UINT64_C(1) << 63)
#define ASTRID_FH_KEEP_CACHE (UINT64_C(1) << 62)
#define ASTRID_FH_INODE      (UINT64_C(1) << 61)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);
typedef struct fuse_session *(*session_new_fn)(struct fuse_args *,
                                               const struct fuse_lowlevel_ops *,
                                               size_t, void *);

int astrid_fuse_shim_loaded(void) { return 5; }

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
static void *libfuse_symbol(const char *name)
{
    void *sym = NULL;
    void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);
    if (lib)
        sym = dlvsym(lib, name, "FUSE_3.0");
    if (!sym && lib)
        sym = dlsym(lib, name); /* the default version, whatever it is */
    if (!sym)
        sym = dlsym(RTLD_NEXT, name);
    return sym;
}

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    static reply_open_fn real;
    if (!real && !(real = (reply_open_fn)libfuse_symbol("fuse_reply_open")))
        return -38; /* -ENOSYS: cannot happen once libfuse is loaded */
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

static void mark(fuse_ino_t ino, struct fuse_file_info *fi)
{
    if (fi && fi->fh == 0)
        fi->fh = ASTRID_FH_INODE | (uint64_t)ino;
}

/* With no_open, OPEN never reaches the daemon, so O_TRUNC must arrive as a
 * SETATTR: turn off atomic_o_trunc (libfuse enables it by default). */
static void shim_init(void *userdata, struct fuse_conn_info *conn)
{
    if (orig_init)
        orig_init(userdata, conn);
    conn->want &= ~FUSE_CAP_ATOMIC_O_TRUNC;
}

static void shim_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
                      struct fuse_file_info *fi)
{
    mark(ino, fi);
    orig_read(req, ino, size, off, fi);
}

static void shim_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size,
                       off_t off, struct fuse_file_info *fi)
{
    mark(ino, fi);
    orig_write(req, ino, buf, size, off, fi);
}

static void shim_write_buf(fuse_req_t req, fuse_ino_t ino, struct fuse_bufvec *bufv,
                           off_t off, struct fuse_file_info *fi)
{
    mark(ino, fi);
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

static void shim_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
    /* libfuse is not in the global scope (see libfuse_symbol): look the
     * reply function up there rather than linking it. */
    static int (*reply_err)(fuse_req_t, int);
    if (!reply_err)
        reply_err = (int (*)(fuse_req_t, int))libfuse_symbol("fuse_reply_err");
    if (reply_err && strcmp(name, "security.capability") == 0) {
        reply_err(req, ENODATA);  /* no file capabilities here */
        return;
    }
    if (reply_err && (strcmp(name, "security.selinux") == 0
                      || strncmp(name, "system.posix_acl_", 17) == 0)) {
        /* Not supported on this file system: ls(1) remembers that per
         * device and stops asking for every entry. */
        reply_err(req, EOPNOTSUPP);
        return;
    }
    orig_getxattr(req, ino, name, size);
}

/* libfuse is not in the global scope (see libfuse_symbol): reply
 * functions are looked up there rather than linked. */
static int send_err(fuse_req_t req, int err)
{
    static int (*real)(fuse_req_t, int);
    if (!real)
        real = (int (*)(fuse_req_t, int))libfuse_symbol("fuse_reply_err");
    return real ? real(req, err) : -ENOSYS;
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

struct fuse_session *fuse_session_new(struct fuse_args *args, const struct fuse_lowlevel_ops *op,
                                      size_t op_size, void *userdata)
{
    session_new_fn real = (session_new_fn)libfuse_symbol("fuse_session_new");
    if (!real)
        return NULL;
    memset(&patched, 0, sizeof patched);
    memcpy(&patched, op, op_size < sizeof patched ? op_size : sizeof patched);
    orig_init = patched.init;
    patched.init = shim_init;
    if (patched.read) {
        orig_read = patched.read;
        patched.read = shim_read;
    }
    if (patched.write) {
        orig_write = patched.write;
        patched.write = shim_write;
    }
    if (patched.write_buf) { /* libfuse prefers it to write when set (pyfuse3 sets it) */
        orig_write_buf = patched.write_buf;
        patched.write_buf = shim_write_buf;
    }
    if (patched.fsync) {
        orig_fsync = patched.fsync;
        patched.fsync = shim_fsync;
    }
    if (patched.getxattr) {
        orig_getxattr = patched.getxattr;
        patched.getxattr = shim_getxattr;
    }
    if (patched.readdirplus) {
        orig_readdirplus = patched.readdirplus;
        patched.readdirplus = shim_readdirplus;
    }
    if (patched.fsyncdir) {
        orig_fsyncdir = patched.fsyncdir;
        patched.fsyncdir = shim_fsyncdir;
    }
    /* pyfuse3 has none of these; the table is passed whole (this shim is
     * compiled against the libfuse headers of the library it wraps). */
    patched.lseek = shim_lseek;
    patched.fallocate = shim_fallocate;
    patched.copy_file_range = shim_copy_file_range;
    return real(args, &patched, sizeof patched, userdata);
}
