/* The export side of the interceptor world and the bump arena (see interceptor.h). */
#include "interceptor.h"

extern unsigned char __heap_base;

static uintptr_t arena_top;
static uintptr_t arena_floor; /* past what init keeps (the config) */

void *arena_alloc(size_t size, size_t align) {
    if (arena_top == 0) arena_top = (uintptr_t)&__heap_base;
    if (align == 0) align = 1;
    uintptr_t p = (arena_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = p + size;
    size_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        size_t pages = (end - have + 65535u) / 65536u;
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) __builtin_trap();
    }
    arena_top = end;
    return (void *)p;
}

size_t cstr_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

int str_eq(str_t a, const char *b) {
    size_t n = cstr_len(b);
    if (a.len != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (a.ptr[i] != b[i]) return 0;
    return 1;
}

int glob_match(const char *pat, size_t pat_len, const char *s, size_t s_len) {
    /* Iterative with one backtrack point: linear for the patterns we ship. */
    size_t p = 0, i = 0, star_p = (size_t)-1, star_i = 0;
    while (i < s_len) {
        if (p < pat_len && (pat[p] == '?' || pat[p] == s[i])) {
            p++;
            i++;
        } else if (p < pat_len && pat[p] == '*') {
            star_p = p++;
            star_i = i;
        } else if (star_p != (size_t)-1) {
            p = star_p + 1;
            i = ++star_i;
        } else {
            return 0;
        }
    }
    while (p < pat_len && pat[p] == '*') p++;
    return p == pat_len;
}

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    unsigned char *p = arena_alloc(new_size, align);
    const unsigned char *o = old;
    if (old && old_size)
        for (size_t i = 0; i < old_size && i < new_size; i++) p[i] = o[i];
    return p;
}

/* result<_, string> and verdict (u8 case; string at offset 4), lifted by the host. */
static struct {
    uint8_t tag;
    uint8_t _pad[3];
    const char *msg;
    size_t msg_len;
} out;

__attribute__((export_name("init")))
void *export_init(const char *config, size_t config_len) {
    const char *error = interceptor_init((str_t){config, config_len});
    if (arena_top == 0) arena_top = (uintptr_t)&__heap_base;
    arena_floor = arena_top; /* the config (and what init built) stays */
    out.tag = error != 0;
    out.msg = error ? error : "";
    out.msg_len = error ? cstr_len(error) : 0;
    return &out;
}

__attribute__((export_name("check")))
void *export_check(const char *plugin, size_t plugin_len, const char *kind, size_t kind_len,
                   const char *resource, size_t resource_len, const detail_t *details,
                   size_t n_details) {
    verdict_t v = interceptor_check((str_t){plugin, plugin_len}, (str_t){kind, kind_len},
                                    (str_t){resource, resource_len}, details, n_details);
    out.tag = (uint8_t)v.tag;
    out.msg = v.tag == VERDICT_ALLOW || !v.reason ? "" : v.reason;
    out.msg_len = cstr_len(out.msg);
    return &out;
}

__attribute__((export_name("cabi_post_check")))
void post_check(void *ret) {
    (void)ret;
    arena_top = arena_floor;
}
