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

int astrid_fuse_shim_loaded(void) { return 4; }

/* pyfuse3 is dlopen()ed RTLD_LOCAL by Python, so libfuse is not in the
 * global scope that RTLD_NEXT searches: ask the loaded library itself. */
static void *libfuse_symbol(const char *name)
{
    void *sym = NULL;
    void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);
    if (lib)
        sym = dlvsym(lib, name, "FUSE_3.0");
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
    return real(args, &patched, op_size < sizeof patched ? op_size : sizeof patched, userdata);
}
