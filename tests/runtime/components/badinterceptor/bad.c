/* A hostile interceptor for the tests: its config says how it misbehaves.
 *   trap      check traps (unreachable)
 *   loop      check spins forever (fuel or the epoch deadline stops it)
 *   grow      check allocates until the memory limit
 *   init      init refuses
 *   ask       check asks ("the test asks")
 *   anything else: check allows; but an action whose resource is "trap"
 *   traps and one whose resource is "loop" spins, so a test can check that
 *   the next call runs on a fresh instance.
 */
#include "interceptor.h"

static str_t mode;

const char *interceptor_init(str_t config) {
    mode = config;
    return str_eq(config, "init") ? "bad: refusing to start" : 0;
}

verdict_t interceptor_check(str_t plugin, str_t kind, str_t resource, const detail_t *details,
                            size_t n_details) {
    (void)plugin;
    (void)kind;
    (void)details;
    (void)n_details;
    if (str_eq(mode, "trap") || str_eq(resource, "trap")) __builtin_trap();
    if (str_eq(mode, "loop") || str_eq(resource, "loop")) {
        volatile unsigned n = 0;
        for (;;) n++;
    }
    if (str_eq(mode, "grow"))
        for (;;) arena_alloc(1 << 20, 16);
    if (str_eq(mode, "ask")) return (verdict_t){VERDICT_ASK, "the test asks"};
    return (verdict_t){VERDICT_ALLOW, 0};
}
