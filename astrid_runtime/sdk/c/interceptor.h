/* Canonical ABI glue for the astrid:kernel@0.1.0 `interceptor` world, by hand.
 *
 * The world (astrid_runtime/wit/interceptor/interceptor.wit) imports nothing
 * and exports `init(config) -> result<_, string>` and
 * `check(plugin, kind, resource, details) -> verdict`. This header spells out
 * the core-wasm shapes `wasm-tools component embed/new` expect for them:
 * strings are (ptr, len); `details` is a list of 16-byte (key, value) string
 * pairs; both results are returned through a pointer to a static area.
 *
 * Memory: a bump arena from __heap_base. What the host passes to `init` (the
 * config) is kept for the instance's life; what it passes to `check` is
 * dropped after each call (in its post-return).
 */
#ifndef ASTRID_INTERCEPTOR_H
#define ASTRID_INTERCEPTOR_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *ptr;
    size_t len;
} str_t;

typedef struct {
    str_t key;
    str_t value;
} detail_t; /* tuple<string, string>: size 16, align 4 */

enum verdict_tag { VERDICT_ALLOW = 0, VERDICT_DENY = 1, VERDICT_ASK = 2 };

typedef struct {
    enum verdict_tag tag;
    const char *reason; /* NUL-terminated; ignored for allow */
} verdict_t;

/* -- what the interceptor provides --------------------------------------- */

/* NULL on success, else an error message (NUL-terminated). */
const char *interceptor_init(str_t config);
verdict_t interceptor_check(str_t plugin, str_t kind, str_t resource, const detail_t *details,
                            size_t n_details);

/* -- helpers ------------------------------------------------------------- */

void *arena_alloc(size_t size, size_t align);
size_t cstr_len(const char *s);
int str_eq(str_t a, const char *b);
/* fnmatch-style: `*` any run (also across '/'), `?` one byte, everything else literal. */
int glob_match(const char *pat, size_t pat_len, const char *s, size_t s_len);

#endif
