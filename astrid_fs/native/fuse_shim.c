/*
 * astrid-fs FUSE reply shim, loaded into the daemon with LD_PRELOAD.
 *
 * pyfuse3 (3.5) cannot set FOPEN_CACHE_DIR or FOPEN_KEEP_CACHE on the reply
 * to OPENDIR: its opendir handler returns only a file handle number. Without
 * them the kernel sends READDIRPLUS for every getdents(2), and a warm `find`
 * or `git status` costs a round trip through Python per directory.
 *
 * The daemon encodes the wanted flags in the top bits of the directory file
 * handle it returns; this shim wraps libfuse's fuse_reply_open and turns
 * those bits into the real flags. The daemon masks the bits off when the
 * handle comes back. Regular files never carry these bits.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdint.h>
#define FUSE_USE_VERSION 35
#include <fuse_lowlevel.h>

#define ASTRID_FH_CACHE_DIR  (UINT64_C(1) << 63)
#define ASTRID_FH_KEEP_CACHE (UINT64_C(1) << 62)

typedef int (*reply_open_fn)(fuse_req_t, const struct fuse_file_info *);

int astrid_fuse_shim_loaded(void) { return 1; }

int fuse_reply_open(fuse_req_t req, const struct fuse_file_info *fi)
{
    static reply_open_fn real;
    if (!real) {
        /* pyfuse3 is dlopen()ed RTLD_LOCAL by Python, so libfuse is not in
         * the global scope RTLD_NEXT searches: ask the loaded library. */
        void *lib = dlopen("libfuse3.so.3", RTLD_NOW | RTLD_NOLOAD);
        if (lib)
            real = (reply_open_fn)dlvsym(lib, "fuse_reply_open", "FUSE_3.0");
        if (!real)
            real = (reply_open_fn)dlsym(RTLD_NEXT, "fuse_reply_open");
        if (!real)
            return -38; /* -ENOSYS: cannot happen once libfuse is loaded */
    }
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
