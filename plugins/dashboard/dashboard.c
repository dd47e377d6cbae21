/* dashboard.c: the web dashboard's routes (plugin.toml says what it may do).
 *
 * The kernel has checked the login, the Host header and the POST header
 * before a request arrives, and adds the Content-Security-Policy to every
 * answer. Paths are below /plugin/dashboard/:
 *
 *   GET  /, /app.js, /style.css   the page (page.h)
 *   GET  /api/state               dashboard.state(): session, sessions, plugins, asks
 *   GET  /api/diff?session=NAME   dashboard.diff(NAME): the session's patch
 *   POST /api/approvals/ID        form answer=once|session|always|deny&reason=...:
 *                                 published on approval.answer (202); the kernel
 *                                 announces the outcome on approval.answered
 */
#include "dashboard.h"
#include "page.h"

/* -- the arena and the exports' glue -------------------------------------- */

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
        /* Over the Store's memory limit: trap; the kernel answers 500 and restarts us. */
        if (__builtin_wasm_memory_grow(0, pages) == (size_t)-1) __builtin_trap();
    }
    arena_top = end;
    return (void *)p;
}

static void arena_reset(void) { arena_top = (uintptr_t)&__heap_base; }

__attribute__((export_name("cabi_realloc")))
void *cabi_realloc(void *old, size_t old_size, size_t align, size_t new_size) {
    unsigned char *p = arena_alloc(new_size, align);
    const unsigned char *o = old;
    if (old && old_size)
        for (size_t i = 0; i < old_size && i < new_size; i++) p[i] = o[i];
    return p;
}

/* result<_, string>: ok, always (nothing to set up, nothing subscribed). */
static struct {
    uint8_t is_err;
    uint8_t _pad[3];
    const char *ptr;
    size_t len;
} unit_ok;

__attribute__((export_name("init")))
void *export_init(const char *config, size_t len) {
    (void)config; (void)len;
    return &unit_ok;
}

__attribute__((export_name("cabi_post_init")))
void post_init(void *ret) { (void)ret; arena_reset(); }

__attribute__((export_name("on-message")))
void *export_on_message(const char *topic, size_t topic_len, const uint8_t *payload,
                        size_t payload_len) {
    (void)topic; (void)topic_len; (void)payload; (void)payload_len;
    return &unit_ok;
}

__attribute__((export_name("cabi_post_on-message")))
void post_on_message(void *ret) { (void)ret; arena_reset(); }

/* -- strings ---------------------------------------------------------------- */

static size_t cstr_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static str_t lit(const char *s) { return (str_t){s, cstr_len(s)}; }

static int eq(str_t a, const char *s) {
    size_t n = cstr_len(s);
    if (a.len != n) return 0;
    for (size_t i = 0; i < n; i++)
        if (a.ptr[i] != s[i]) return 0;
    return 1;
}

static int starts(str_t a, const char *prefix) {
    size_t n = cstr_len(prefix);
    if (a.len < n) return 0;
    for (size_t i = 0; i < n; i++)
        if (a.ptr[i] != prefix[i]) return 0;
    return 1;
}

static int hex(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* application/x-www-form-urlencoded value: '+' is a space, %XX a byte. */
static str_t url_decode(str_t in) {
    char *out = arena_alloc(in.len + 1, 1);
    size_t n = 0;
    for (size_t i = 0; i < in.len; i++) {
        char c = in.ptr[i];
        if (c == '+') c = ' ';
        else if (c == '%' && i + 2 < in.len && hex(in.ptr[i + 1]) >= 0
                 && hex(in.ptr[i + 2]) >= 0) {
            c = (char)(hex(in.ptr[i + 1]) * 16 + hex(in.ptr[i + 2]));
            i += 2;
        }
        out[n++] = c;
    }
    return (str_t){out, n};
}

/* The decoded value of `key` in a query string or form body; found = 0 if absent. */
static str_t form_value(str_t form, const char *key, int *found) {
    size_t klen = cstr_len(key);
    size_t i = 0;
    *found = 0;
    while (i <= form.len) {
        size_t end = i;
        while (end < form.len && form.ptr[end] != '&') end++;
        str_t pair = {form.ptr + i, end - i};
        if (pair.len > klen && pair.ptr[klen] == '=' && starts(pair, key)) {
            *found = 1;
            return url_decode((str_t){pair.ptr + klen + 1, pair.len - klen - 1});
        }
        i = end + 1;
    }
    return (str_t){"", 0};
}

/* A growing output buffer in the arena (one at a time). */
typedef struct {
    char *ptr;
    size_t len;
    size_t cap;
} buf_t;

static void put(buf_t *b, const char *s, size_t n) {
    if (b->len + n > b->cap) {
        size_t cap = (b->cap + n) * 2;
        char *grown = arena_alloc(cap, 1);
        for (size_t i = 0; i < b->len; i++) grown[i] = b->ptr[i];
        b->ptr = grown;
        b->cap = cap;
    }
    for (size_t i = 0; i < n; i++) b->ptr[b->len + i] = s[i];
    b->len += n;
}

static void puts_lit(buf_t *b, const char *s) { put(b, s, cstr_len(s)); }

/* `s` as the inside of a JSON string. */
static void put_json(buf_t *b, str_t s) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < s.len; i++) {
        unsigned char c = (unsigned char)s.ptr[i];
        if (c == '"' || c == '\\') {
            char esc[2] = {'\\', (char)c};
            put(b, esc, 2);
        } else if (c < 0x20 || c == 0x7f) {
            char esc[6] = {'\\', 'u', '0', '0', digits[c >> 4], digits[c & 15]};
            put(b, esc, 6);
        } else {
            put(b, (const char *)&s.ptr[i], 1);
        }
    }
}

/* -- answers ------------------------------------------------------------------ */

static response_t answer;
static header_t content_type[1];

static void *respond(uint32_t status, const char *type, str_t body) {
    content_type[0] = (header_t){lit("content-type"), lit(type)};
    answer = (response_t){status, content_type, 1, (const uint8_t *)body.ptr, body.len};
    return &answer;
}

static void *text(uint32_t status, const char *message) {
    return respond(status, "text/plain; charset=utf-8", lit(message));
}

/* A refused host call: its message, under the status its error case means. */
static void *refused(const string_result_t *r) {
    static const uint32_t status[] = {
        [E_DENIED] = 403, [E_NOT_FOUND] = 404, [E_INVALID] = 400, [E_TOO_LARGE] = 413,
        [E_RATE_LIMITED] = 429, [E_CLOSED] = 500, [E_IO] = 500, [E_CONFLICT] = 409,
        [E_UNAVAILABLE] = 503, [E_INTERNAL] = 500};
    uint8_t c = r->u.err.error_case;
    return respond(c <= E_INTERNAL ? status[c] : 500, "text/plain; charset=utf-8",
                   r->u.err.msg);
}

static void *state(void) {
    string_result_t r;
    kernel_state(&r);
    if (r.is_err) return refused(&r);
    return respond(200, "application/json", r.u.ok);
}

static void *diff(str_t query) {
    int found;
    str_t session = form_value(query, "session", &found);
    if (!found) return text(400, "want ?session=NAME");
    string_result_t r;
    kernel_diff(session.ptr, session.len, &r);
    if (r.is_err) return refused(&r);
    return respond(200, "text/plain; charset=utf-8", r.u.ok);
}

static int ask_id_ok(str_t id) {
    if (id.len == 0 || id.len > 64) return 0;
    for (size_t i = 0; i < id.len; i++) {
        char c = id.ptr[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
                 || c == '-' || c == '_';
        if (!ok) return 0;
    }
    return 1;
}

/* Answer an ask the way any frontend plugin does: {"id", "answer", "reason"} on
 * approval.answer; the kernel takes it (or audits why not) and says so on
 * approval.answered. */
static void *answer_ask(str_t id, str_t form) {
    if (!ask_id_ok(id)) return text(400, "not an ask id");
    int found, has_reason;
    str_t how = form_value(form, "answer", &found);
    str_t reason = form_value(form, "reason", &has_reason);
    if (!found || !(eq(how, "once") || eq(how, "session") || eq(how, "always")
                    || eq(how, "deny")))
        return text(400, "answer must be once, session, always or deny");
    buf_t b = {0, 0, 0};
    puts_lit(&b, "{\"id\":\"");
    put(&b, id.ptr, id.len);
    puts_lit(&b, "\",\"answer\":\"");
    put(&b, how.ptr, how.len);
    puts_lit(&b, "\",\"reason\":\"");
    put_json(&b, reason);
    puts_lit(&b, "\"}");
    string_result_t r;
    bus_publish("approval.answer", 15, (const uint8_t *)b.ptr, b.len, &r);
    if (r.is_err) return refused(&r);
    buf_t sent = {0, 0, 0};
    puts_lit(&sent, "{\"id\":\"");
    put(&sent, id.ptr, id.len);
    puts_lit(&sent, "\",\"answer\":\"");
    put(&sent, how.ptr, how.len);
    puts_lit(&sent, "\"}");
    return respond(202, "application/json", (str_t){sent.ptr, sent.len});
}

__attribute__((export_name("astrid:kernel/http-handler@0.1.0#handle")))
void *export_handle(const char *method_ptr, size_t method_len, const char *path_ptr,
                    size_t path_len, const char *query_ptr, size_t query_len,
                    const header_t *headers, size_t n_headers, const uint8_t *body,
                    size_t body_len) {
    (void)headers; (void)n_headers;
    str_t method = {method_ptr, method_len}, path = {path_ptr, path_len};
    str_t query = {query_ptr, query_len};
    if (eq(method, "POST")) {
        if (starts(path, "/api/approvals/"))
            return answer_ask((str_t){path.ptr + 15, path.len - 15},
                              (str_t){(const char *)body, body_len});
        return text(404, "no such action");
    }
    if (!eq(method, "GET")) return text(405, "GET or POST only");
    if (eq(path, "/")) return respond(200, "text/html; charset=utf-8", lit(PAGE_HTML));
    if (eq(path, "/app.js")) return respond(200, "text/javascript; charset=utf-8", lit(APP_JS));
    if (eq(path, "/style.css")) return respond(200, "text/css; charset=utf-8", lit(STYLE_CSS));
    if (eq(path, "/api/state")) return state();
    if (eq(path, "/api/diff")) return diff(query);
    return text(404, "not found");
}

__attribute__((export_name("cabi_post_astrid:kernel/http-handler@0.1.0#handle")))
void post_handle(void *ret) { (void)ret; arena_reset(); }
