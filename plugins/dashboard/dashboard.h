/* dashboard.h: canonical ABI glue for the `astrid:dashboard@0.1.0` world, by
 * hand (no wit-bindgen here; docs/plugins.md, "The non-Python path: C").
 *
 * Imports: bus.publish, dashboard.state, dashboard.diff. Exports: init,
 * on-message (the plugin world), http-handler.handle, their post-returns,
 * cabi_realloc. Memory is a bump arena from __heap_base, emptied in each
 * post-return, after the host has copied the result out.
 */
#ifndef DASHBOARD_H
#define DASHBOARD_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *ptr;
    size_t len;
} str_t;

/* tuple<string, string>: size 16, align 4. */
typedef struct {
    str_t name;
    str_t value;
} header_t;

/* The `error` variant's cases, in WIT order. */
enum error_case {
    E_DENIED, E_NOT_FOUND, E_INVALID, E_TOO_LARGE, E_RATE_LIMITED, E_CLOSED, E_IO,
    E_CONFLICT, E_UNAVAILABLE, E_INTERNAL
};

/* result<string, error> (and result<_, error>, whose ok carries nothing):
 * u8 at 0; ok string at 4/8; err case u8 at 4, its string at 8/12. */
typedef struct {
    uint8_t is_err;
    uint8_t _pad[3];
    union {
        str_t ok;
        struct {
            uint8_t error_case;
            uint8_t _pad[3];
            str_t msg;
        } err;
    } u;
} string_result_t;

/* response { status: u32, headers: list<tuple<string,string>>, body: list<u8> }:
 * returned through a pointer (more than one flat value). */
typedef struct {
    uint32_t status;
    const header_t *headers;
    size_t n_headers;
    const uint8_t *body;
    size_t body_len;
} response_t;

__attribute__((import_module("astrid:kernel/bus@0.1.0"), import_name("publish")))
void bus_publish(const char *topic, size_t topic_len, const uint8_t *payload,
                 size_t payload_len, string_result_t *ret);

__attribute__((import_module("astrid:kernel/dashboard@0.1.0"), import_name("state")))
void kernel_state(string_result_t *ret);

__attribute__((import_module("astrid:kernel/dashboard@0.1.0"), import_name("diff")))
void kernel_diff(const char *session, size_t session_len, string_result_t *ret);

void *arena_alloc(size_t size, size_t align);

#endif
