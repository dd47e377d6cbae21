/* path-guard: an interceptor that allows, denies or asks by glob over an
 * action's kind and resource.
 *
 * Config: rules separated by newlines or ';', tried in order, first match
 * decides; no match is "allow" (no objection: the policy decides).
 *
 *     deny fs.* workspace/.git/* the repository's metadata is off limits
 *     ask  net.http http://*      plain http
 *
 * Each rule is DECISION KIND-GLOB RESOURCE-GLOB [REASON...], where globs
 * are fnmatch-style (`*` also matches '/'). A commit of several paths has a
 * resource `workspace/P1,P2`: each path is also checked as `workspace/Pn`.
 */
#include "interceptor.h"

#define MAX_RULES 64

typedef struct {
    enum verdict_tag decision;
    str_t kind;
    str_t resource;
    const char *reason;
} rule_t;

static rule_t rules[MAX_RULES];
static size_t n_rules;
static char error_text[96];

static int is_space(char c) { return c == ' ' || c == '\t' || c == '\r'; }

static str_t next_word(const char **p, const char *end) {
    while (*p < end && is_space(**p)) (*p)++;
    const char *start = *p;
    while (*p < end && !is_space(**p)) (*p)++;
    return (str_t){start, (size_t)(*p - start)};
}

static const char *fail(const char *what, size_t rule_no) {
    /* "path-guard: rule N: what" without printf */
    static const char head[] = "path-guard: rule ";
    size_t n = 0;
    for (size_t i = 0; head[i]; i++) error_text[n++] = head[i];
    char digits[8];
    size_t d = 0;
    do { digits[d++] = (char)('0' + rule_no % 10); rule_no /= 10; } while (rule_no && d < 8);
    while (d) error_text[n++] = digits[--d];
    error_text[n++] = ':';
    error_text[n++] = ' ';
    for (size_t i = 0; what[i] && n < sizeof error_text - 1; i++) error_text[n++] = what[i];
    error_text[n] = 0;
    return error_text;
}

/* "path-guard: " + the rule's text, NUL-terminated, kept in the arena. */
static const char *reason_of(const char *start, const char *end) {
    static const char head[] = "path-guard: ";
    size_t h = sizeof head - 1, n = (size_t)(end - start);
    char *text = arena_alloc(h + n + 1, 1);
    for (size_t i = 0; i < h; i++) text[i] = head[i];
    for (size_t i = 0; i < n; i++) text[h + i] = start[i];
    text[h + n] = 0;
    return text;
}

const char *interceptor_init(str_t config) {
    const char *p = config.ptr, *end = config.ptr + config.len;
    n_rules = 0;
    while (p < end) {
        const char *line = p;
        while (p < end && *p != '\n' && *p != ';') p++;
        const char *line_end = p;
        if (p < end) p++;
        const char *q = line;
        str_t decision = next_word(&q, line_end);
        if (decision.len == 0 || decision.ptr[0] == '#') continue;
        if (n_rules == MAX_RULES) return fail("too many rules (at most 64)", n_rules + 1);
        rule_t *r = &rules[n_rules];
        if (str_eq(decision, "deny")) r->decision = VERDICT_DENY;
        else if (str_eq(decision, "ask")) r->decision = VERDICT_ASK;
        else if (str_eq(decision, "allow")) r->decision = VERDICT_ALLOW;
        else return fail("decision must be deny, ask or allow", n_rules + 1);
        r->kind = next_word(&q, line_end);
        r->resource = next_word(&q, line_end);
        if (r->kind.len == 0 || r->resource.len == 0)
            return fail("wants DECISION KIND-GLOB RESOURCE-GLOB [REASON]", n_rules + 1);
        while (line_end > line && is_space(line_end[-1])) line_end--;
        r->reason = reason_of(decision.ptr, line_end);
        n_rules++;
    }
    return 0;
}

static int resource_matches(const rule_t *r, str_t resource) {
    if (glob_match(r->resource.ptr, r->resource.len, resource.ptr, resource.len)) return 1;
    /* workspace/P1,P2: check each path as workspace/Pn too. */
    size_t slash = 0;
    while (slash < resource.len && resource.ptr[slash] != '/') slash++;
    if (slash == resource.len) return 0;
    const char *p = resource.ptr + slash + 1, *end = resource.ptr + resource.len;
    char *one = arena_alloc(resource.len + 1, 1);
    for (size_t i = 0; i <= slash; i++) one[i] = resource.ptr[i];
    while (p < end) {
        const char *item = p;
        while (p < end && *p != ',') p++;
        size_t n = (size_t)(p - item);
        for (size_t i = 0; i < n; i++) one[slash + 1 + i] = item[i];
        if (glob_match(r->resource.ptr, r->resource.len, one, slash + 1 + n)) return 1;
        if (p < end) p++;
    }
    return 0;
}

verdict_t interceptor_check(str_t plugin, str_t kind, str_t resource, const detail_t *details,
                            size_t n_details) {
    (void)plugin;
    (void)details;
    (void)n_details;
    for (size_t i = 0; i < n_rules; i++) {
        const rule_t *r = &rules[i];
        if (glob_match(r->kind.ptr, r->kind.len, kind.ptr, kind.len) &&
            resource_matches(r, resource))
            return (verdict_t){r->decision, r->reason};
    }
    return (verdict_t){VERDICT_ALLOW, 0};
}
