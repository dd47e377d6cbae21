/* The export side of the canonical ABI and the bump arena (see astrid.h). */
#include "astrid.h"

extern unsigned char __heap_base;

static uintptr_t arena_top;

static uintptr_t arena_start(void) { return (uintptr_t)&__heap_base; }

void *arena_alloc(size_t size, size_t align) {
    if (arena_top == 0) arena_top = arena_start();
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

static void arena_reset(void) { arena_top = arena_start(); }

size_t cstr_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

void *mem_copy(void *dst, const void *src, size_t n) {
    unsigned char *d = dst;
    const unsigned char *s = src;
    for (size_t i = 0; i < n; i++) d[i] = s[i];
    return dst;
}

/* The host allocates argument strings and lists (and host-returned error
 * strings) through this. Reallocation copies: the arena never frees. */
__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    void *p = arena_alloc(new_size, align);
    if (old && old_size) mem_copy(p, old, old_size < new_size ? old_size : new_size);
    return p;
}

/* result<_, string>, lifted by the host from this static area. */
static struct {
    uint8_t is_err;
    uint8_t _pad[3];
    const char *msg;
    size_t msg_len;
} export_result;

static void *finish(const char *error) {
    export_result.is_err = error != 0;
    export_result.msg = error ? error : "";
    export_result.msg_len = error ? cstr_len(error) : 0;
    return &export_result;
}

__attribute__((export_name("init")))
void *export_init(const char *config, size_t config_len) {
    return finish(plugin_init(config, config_len));
}

__attribute__((export_name("cabi_post_init")))
void post_init(void *ret) { (void)ret; arena_reset(); }

__attribute__((export_name("on-message")))
void *export_on_message(const char *topic, size_t topic_len, const uint8_t *payload,
                        size_t payload_len) {
    return finish(plugin_on_message(topic, topic_len, payload, payload_len));
}

__attribute__((export_name("cabi_post_on-message")))
void post_on_message(void *ret) { (void)ret; arena_reset(); }
