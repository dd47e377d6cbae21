/* Canonical ABI glue for the `astrid:markdown@0.1.0` provider world, by hand.
 *
 * One export, `render.to-html: func(string) -> result<string, string>`:
 * core shape (ptr, len) -> pointer to a static result area (tag byte, then
 * the string's ptr/len at offset 4). Memory is a bump arena from
 * __heap_base, emptied in the post-return after the host has copied the
 * result out, so each call starts with the same memory.
 */
#include "markdown.h"

extern unsigned char __heap_base;
static uintptr_t arena_top;

void *arena_alloc(size_t size, size_t align) {
    if (arena_top == 0) arena_top = (uintptr_t)&__heap_base;
    if (align == 0) align = 1;
    uintptr_t p = (arena_top + align - 1) & ~(uintptr_t)(align - 1);
    uintptr_t end = p + size;
    size_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have) {
        size_t pages = (end - have + 65535u) / 65536u;
        /* Over the Store's memory limit: trap; the host returns err to the caller. */
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) __builtin_trap();
    }
    arena_top = end;
    return (void *)p;
}

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    unsigned char *p = arena_alloc(new_size, align);
    const unsigned char *o = old;
    if (old && old_size)
        for (size_t i = 0; i < old_size && i < new_size; i++) p[i] = o[i];
    return p;
}

static struct {
    uint8_t tag;
    uint8_t _pad[3];
    const char *ptr;
    size_t len;
} out;

__attribute__((export_name("astrid:markdown/render@0.1.0#to-html")))
void *export_to_html(const char *text, size_t len) {
    str_t error = {0, 0};
    str_t html = markdown_to_html((str_t){text, len}, &error);
    out.tag = error.ptr != 0;
    out.ptr = error.ptr ? error.ptr : html.ptr;
    out.len = error.ptr ? error.len : html.len;
    return &out;
}

__attribute__((export_name("cabi_post_astrid:markdown/render@0.1.0#to-html")))
void post_to_html(void *ret) {
    (void)ret;
    arena_top = (uintptr_t)&__heap_base;
}
