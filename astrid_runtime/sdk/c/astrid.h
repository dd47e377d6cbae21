/* astrid.h: the C SDK -- canonical ABI glue for the astrid:kernel@0.1.0
 * `plugin` world, shipped once with the kernel (astrid_runtime/sdk/c/).
 *
 * A C plugin includes "astrid.h" and defines plugin_init and
 * plugin_on_message; the builder (astrid_runtime/scaffold/build.py) adds
 * this directory to the include path and compiles astrid.c with it.
 *
 * No wit-bindgen here: this header spells out, for the few functions a C
 * plugin uses, the core-wasm signatures and memory layouts that
 * `wasm-tools component embed/new` expect (the "legacy" names: imports from
 * module "astrid:kernel/bus@0.1.0", exports "init", "on-message",
 * "cabi_post_*", "cabi_realloc", "memory").
 *
 * Memory: a bump arena from __heap_base, grown with memory.grow, reset after
 * each export call (in its post-return), so nothing the host allocated for
 * a call outlives it.
 */
#ifndef ASTRID_SDK_H
#define ASTRID_SDK_H

#include <stddef.h>
#include <stdint.h>

/* result<_, error> / result<u64, error> returned through a pointer. `error`
 * is variant { denied(string), not-found(string), ... }: u8 case, then a
 * string (ptr, len) at offset 4 of the variant. */
typedef struct {
    uint8_t is_err;
    uint8_t _pad[3];
    uint8_t error_case;
    uint8_t _pad2[3];
    const char *msg;
    size_t msg_len;
} unit_result_t; /* size 16, align 4 */

typedef struct {
    uint8_t is_err;
    uint8_t _pad[7];
    union {
        uint64_t ok;
        struct {
            uint8_t error_case;
            uint8_t _pad2[3];
            const char *msg;
            size_t msg_len;
        } err;
    } u;
} u64_result_t; /* size 24, align 8 */

enum log_level { LOG_TRACE, LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

typedef struct {
    const char *key;
    size_t key_len;
    const char *value;
    size_t value_len;
} log_field_t; /* tuple<string, string>: size 16, align 4 */

/* -- imports ------------------------------------------------------------ */

__attribute__((import_module("astrid:kernel/bus@0.1.0"), import_name("publish")))
void astrid_bus_publish(const char *topic, size_t topic_len, const uint8_t *payload,
                        size_t payload_len, unit_result_t *ret);

__attribute__((import_module("astrid:kernel/bus@0.1.0"), import_name("subscribe")))
void astrid_bus_subscribe(const char *pattern, size_t pattern_len, u64_result_t *ret);

__attribute__((import_module("astrid:kernel/log@0.1.0"), import_name("write")))
void astrid_log_write(int32_t level, const char *msg, size_t msg_len,
                      const log_field_t *fields, size_t n_fields, unit_result_t *ret);

/* -- what the plugin provides ------------------------------------------- */

/* Both return NULL on success or an error message (NUL-terminated) to be
 * returned as the export's err(string). */
const char *plugin_init(const char *config, size_t config_len);
const char *plugin_on_message(const char *topic, size_t topic_len, const uint8_t *payload,
                              size_t payload_len);

/* -- helpers ------------------------------------------------------------ */

void *arena_alloc(size_t size, size_t align);
size_t cstr_len(const char *s);
void *mem_copy(void *dst, const void *src, size_t n);

#endif
