/* wordcount: counts words, lines and characters of `tools.wordcount` text.
 *
 * Input: the payload as UTF-8 text. Output on `agent.response`:
 *   {"text":"3 words, 1 line, 15 characters","plugin":"wordcount",
 *    "words":3,"lines":1,"chars":15,"bytes":15}
 * Words are runs of non-whitespace; lines count like `wc -l`, plus a final
 * line without a newline; characters are UTF-8 code points.
 */
#include "astrid.h"

static const char TOPIC_IN[] = "tools.wordcount";
static const char TOPIC_OUT[] = "agent.response";

typedef struct {
    char *buf;
    size_t len;
} text_t;

static void put(text_t *t, const char *s) {
    size_t n = cstr_len(s);
    mem_copy(t->buf + t->len, s, n);
    t->len += n;
}

static void put_u64(text_t *t, uint64_t v) {
    char digits[20];
    int n = 0;
    do { digits[n++] = (char)('0' + v % 10); v /= 10; } while (v);
    while (n) t->buf[t->len++] = digits[--n];
}

static void put_count(text_t *t, uint64_t n, const char *one, const char *many) {
    put_u64(t, n);
    put(t, " ");
    put(t, n == 1 ? one : many);
}

/* The host's error message, NUL-terminated, prefixed by what failed. */
static const char *host_error(const char *what, const char *msg, size_t len) {
    size_t w = cstr_len(what);
    char *out = arena_alloc(w + len + 1, 1);
    mem_copy(out, what, w);
    mem_copy(out + w, msg, len);
    out[w + len] = 0;
    return out;
}

static void log_info(const char *msg) {
    unit_result_t ret;
    astrid_log_write(LOG_INFO, msg, cstr_len(msg), 0, 0, &ret);
}

const char *plugin_init(const char *config, size_t config_len) {
    (void)config;
    (void)config_len;
    u64_result_t ret;
    astrid_bus_subscribe(TOPIC_IN, sizeof TOPIC_IN - 1, &ret);
    if (ret.is_err) return host_error("subscribe: ", ret.u.err.msg, ret.u.err.msg_len);
    log_info("wordcount ready");
    return 0;
}

static int is_space(uint8_t c) {
    return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f';
}

const char *plugin_on_message(const char *topic, size_t topic_len, const uint8_t *payload,
                              size_t payload_len) {
    (void)topic;
    (void)topic_len;
    uint64_t words = 0, lines = 0, chars = 0;
    int in_word = 0;
    for (size_t i = 0; i < payload_len; i++) {
        uint8_t c = payload[i];
        if ((c & 0xC0) != 0x80) chars++;
        if (c == '\n') lines++;
        if (is_space(c)) {
            in_word = 0;
        } else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    if (payload_len && payload[payload_len - 1] != '\n') lines++;

    text_t out = {arena_alloc(512, 1), 0};
    put(&out, "{\"text\":\"");
    put_count(&out, words, "word", "words");
    put(&out, ", ");
    put_count(&out, lines, "line", "lines");
    put(&out, ", ");
    put_count(&out, chars, "character", "characters");
    put(&out, "\",\"plugin\":\"wordcount\",\"words\":");
    put_u64(&out, words);
    put(&out, ",\"lines\":");
    put_u64(&out, lines);
    put(&out, ",\"chars\":");
    put_u64(&out, chars);
    put(&out, ",\"bytes\":");
    put_u64(&out, payload_len);
    put(&out, "}");

    unit_result_t ret;
    astrid_bus_publish(TOPIC_OUT, sizeof TOPIC_OUT - 1, (const uint8_t *)out.buf, out.len, &ret);
    if (ret.is_err) return host_error("publish: ", ret.msg, ret.msg_len);
    return 0;
}
