/* A hostile astrid:markdown/render provider for the link tests: to-html("trap")
 * traps, "loop" spins forever, "bomb" grows memory until the Store's limit
 * stops it, "fail" answers err; anything else answers CONFIG + "<p>TEXT</p>"
 * (the config tells two pinned versions apart in the hot-swap test). */
#include <stddef.h>
#include <stdint.h>

extern unsigned char __heap_base;
static uintptr_t arena_top;
static char prefix[16];
static size_t prefix_len;

static void *arena_alloc(size_t size) {
    if (arena_top == 0) arena_top = (uintptr_t)&__heap_base;
    uintptr_t p = (arena_top + 7) & ~(uintptr_t)7;
    uintptr_t end = p + size;
    size_t have = __builtin_wasm_memory_size(0) * 65536u;
    if (end > have && __builtin_wasm_memory_grow(0, (end - have + 65535u) / 65536u) == (size_t)-1)
        __builtin_trap();
    arena_top = end;
    return (void *)p;
}

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    (void)align;
    unsigned char *p = arena_alloc(new_size);
    for (size_t i = 0; old && i < old_size && i < new_size; i++) p[i] = ((unsigned char *)old)[i];
    return p;
}

static int is(const char *s, size_t n, const char *word) {
    size_t i = 0;
    for (; word[i]; i++)
        if (i >= n || s[i] != word[i]) return 0;
    return i == n;
}

static struct { uint8_t tag; uint8_t pad[3]; const char *ptr; size_t len; } out;

/* init(config): the config is a prefix put before every answer (tells versions apart). */
__attribute__((export_name("init")))
void *export_init(const char *config, size_t len) {
    prefix_len = len < sizeof prefix ? len : sizeof prefix;
    for (size_t i = 0; i < prefix_len; i++) prefix[i] = config[i];
    out.tag = 0;
    arena_top = 0;
    return &out;
}

__attribute__((export_name("astrid:markdown/render@0.1.0#to-html")))
void *export_to_html(const char *text, size_t len) {
    if (is(text, len, "trap")) __builtin_trap();
    if (is(text, len, "loop")) for (volatile int spin = 1; spin;) {}
    if (is(text, len, "bomb")) for (;;) arena_alloc(1 << 20);
    if (is(text, len, "fail")) {
        out.tag = 1;
        out.ptr = "refused";
        out.len = 7;
        return &out;
    }
    char *html = arena_alloc(prefix_len + len + 7);
    size_t n = 0;
    for (size_t i = 0; i < prefix_len; i++) html[n++] = prefix[i];
    html[n++] = '<'; html[n++] = 'p'; html[n++] = '>';
    for (size_t i = 0; i < len; i++) html[n++] = text[i];
    html[n++] = '<'; html[n++] = '/'; html[n++] = 'p'; html[n++] = '>';
    out.tag = 0;
    out.ptr = html;
    out.len = n;
    return &out;
}

__attribute__((export_name("cabi_post_astrid:markdown/render@0.1.0#to-html")))
void post_to_html(void *ret) {
    (void)ret;
    arena_top = 0;
}
