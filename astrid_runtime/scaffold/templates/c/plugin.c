/* {{name}}: an Astrid plugin in C (no libc, no WASI; built with zig cc).
 *
 *     {{name}}.ping   -> {"text":"pong","plugin":"{{name}}"} on agent.response
 *
 * "astrid.h" is the kernel's C SDK (astrid_runtime/sdk/c): the Host ABI's
 * imports, the exports' glue and a bump arena that empties after each call.
 *
 * Build:   python -m astrid_runtime.scaffold.build path/to/{{name}}
 * Install: astrid plugin install path/to/{{name}}
 */
#include "astrid.h"

static const char PATTERN[] = "{{name}}.>";
static const char REPLY_TOPIC[] = "agent.response";
static const char PONG[] = "{\"text\":\"pong\",\"plugin\":\"{{name}}\"}";

static int starts_with(const char *s, size_t n, const char *prefix) {
    size_t k = cstr_len(prefix);
    if (n < k) return 0;
    for (size_t i = 0; i < k; i++)
        if (s[i] != prefix[i]) return 0;
    return 1;
}

const char *plugin_init(const char *config, size_t config_len) {
    (void)config;
    (void)config_len;
    u64_result_t r;
    astrid_bus_subscribe(PATTERN, sizeof PATTERN - 1, &r);
    return r.is_err ? "cannot subscribe to {{name}}.>" : 0;
}

const char *plugin_on_message(const char *topic, size_t topic_len, const uint8_t *payload,
                              size_t payload_len) {
    (void)payload;
    (void)payload_len;
    if (!starts_with(topic, topic_len, "{{name}}.ping")) return 0;
    unit_result_t r;
    astrid_bus_publish(REPLY_TOPIC, sizeof REPLY_TOPIC - 1, (const uint8_t *)PONG,
                       sizeof PONG - 1, &r);
    return r.is_err ? "cannot publish the reply" : 0;
}
