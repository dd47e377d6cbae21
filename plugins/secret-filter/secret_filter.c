/* secret-filter: an interceptor that denies (or asks about) an action whose
 * resource or details carry a secret or personal data.
 *
 * Patterns (no regex engine: each is a small hand-written matcher):
 *   aws-key      AKIA / ASIA followed by 16 of [A-Z0-9]
 *   github-token ghp_ gho_ ghu_ ghs_ ghr_ followed by 36 of [A-Za-z0-9]; github_pat_ + 22
 *   slack-token  xoxb- xoxp- xoxa- xoxr- xoxs- followed by 10 of [A-Za-z0-9-]
 *   google-key   AIza followed by 35 of [A-Za-z0-9_-]
 *   private-key  -----BEGIN ... PRIVATE KEY-----
 *   email        local@domain.tld (local: [A-Za-z0-9._%+-]+, domain with a dot, tld >= 2 letters)
 *
 * Config: words separated by spaces, ',' or ';': `ask` to ask a person instead
 * of denying; `-NAME` to switch a pattern off (e.g. `-email`). The reason
 * names the pattern and where it was found, never the secret itself.
 */
#include "interceptor.h"

static enum verdict_tag on_match = VERDICT_DENY;
static unsigned disabled; /* bit per pattern */

enum { AWS, GITHUB, SLACK, GOOGLE, PRIVATE_KEY, EMAIL, N_PATTERNS };
static const char *const names[N_PATTERNS] = {"aws-key", "github-token", "slack-token",
                                              "google-key", "private-key", "email"};

static int upper_or_digit(char c) { return (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'); }
static int alnum(char c) { return upper_or_digit(c) || (c >= 'a' && c <= 'z'); }
static int starts(const char *s, size_t n, const char *prefix) {
    size_t i = 0;
    for (; prefix[i]; i++)
        if (i >= n || s[i] != prefix[i]) return 0;
    return (int)i;
}
static size_t run_of(const char *s, size_t n, int (*ok)(char)) {
    size_t i = 0;
    while (i < n && ok(s[i])) i++;
    return i;
}
static int key_char(char c) { return alnum(c) || c == '_' || c == '-'; }
static int slack_char(char c) { return alnum(c) || c == '-'; }
static int local_char(char c) {
    return alnum(c) || c == '.' || c == '_' || c == '%' || c == '+' || c == '-';
}
static int domain_char(char c) { return alnum(c) || c == '-' || c == '.'; }
static int letter(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }

static int email_at(const char *s, size_t n, size_t at) {
    /* s[at] == '@': a local part before, a dotted domain after. */
    if (at == 0 || !local_char(s[at - 1])) return 0;
    size_t d = at + 1, len = run_of(s + d, n - d, domain_char);
    if (len == 0) return 0;
    size_t last_dot = (size_t)-1;
    for (size_t i = 0; i < len; i++)
        if (s[d + i] == '.') last_dot = i;
    if (last_dot == (size_t)-1 || last_dot == 0) return 0;
    size_t tld = 0;
    for (size_t i = last_dot + 1; i < len && letter(s[d + i]); i++) tld++;
    return tld >= 2;
}

/* Which pattern, if any, occurs in s[0..n). One switch on the byte first,
 * so most bytes cost a compare or two (fuel is per instruction). */
static int find_secret(const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        const char *p = s + i;
        size_t left = n - i;
        int k;
        switch (p[0]) {
        case 'A':
            if (!(disabled & (1u << AWS)) && (starts(p, left, "AKIA") || starts(p, left, "ASIA"))
                && run_of(p + 4, left - 4, upper_or_digit) >= 16)
                return AWS;
            if (!(disabled & (1u << GOOGLE)) && starts(p, left, "AIza") &&
                run_of(p + 4, left - 4, key_char) >= 35)
                return GOOGLE;
            break;
        case 'g':
            if (disabled & (1u << GITHUB)) break;
            if (left > 4 && p[1] == 'h' &&
                (p[2] == 'p' || p[2] == 'o' || p[2] == 'u' || p[2] == 's' || p[2] == 'r') &&
                p[3] == '_' && run_of(p + 4, left - 4, alnum) >= 36)
                return GITHUB;
            if ((k = starts(p, left, "github_pat_")) && run_of(p + k, left - k, key_char) >= 22)
                return GITHUB;
            break;
        case 'x':
            if (!(disabled & (1u << SLACK)) && left > 5 && starts(p, left, "xox") &&
                (p[3] == 'b' || p[3] == 'p' || p[3] == 'a' || p[3] == 'r' || p[3] == 's') &&
                p[4] == '-' && run_of(p + 5, left - 5, slack_char) >= 10)
                return SLACK;
            break;
        case '-':
            if (!(disabled & (1u << PRIVATE_KEY)) && (k = starts(p, left, "-----BEGIN "))) {
                for (size_t j = (size_t)k; j + 16 <= left && j < 64; j++)
                    if (starts(p + j, left - j, "PRIVATE KEY-----")) return PRIVATE_KEY;
            }
            break;
        case '@':
            if (!(disabled & (1u << EMAIL)) && email_at(s, n, i)) return EMAIL;
            break;
        default:
            break;
        }
    }
    return -1;
}

const char *interceptor_init(str_t config) {
    const char *p = config.ptr, *end = config.ptr + config.len;
    on_match = VERDICT_DENY;
    disabled = 0;
    while (p < end) {
        while (p < end && (*p == ' ' || *p == ',' || *p == ';' || *p == '\n')) p++;
        const char *w = p;
        while (p < end && !(*p == ' ' || *p == ',' || *p == ';' || *p == '\n')) p++;
        str_t word = {w, (size_t)(p - w)};
        if (word.len == 0) continue;
        if (str_eq(word, "ask")) { on_match = VERDICT_ASK; continue; }
        if (str_eq(word, "deny")) { on_match = VERDICT_DENY; continue; }
        int known = 0;
        if (word.ptr[0] == '-')
            for (int i = 0; i < N_PATTERNS; i++)
                if (str_eq((str_t){word.ptr + 1, word.len - 1}, names[i])) {
                    disabled |= 1u << i;
                    known = 1;
                }
        if (!known) return "secret-filter: config words are ask, deny or -PATTERN "
                           "(aws-key, github-token, slack-token, google-key, private-key, email)";
    }
    return 0;
}

/* "secret-filter: <pattern> in <where>" (where: "resource" or "details[KEY]"). */
static const char *reason(int pattern, const char *where, str_t key) {
    static const char head[] = "secret-filter: ";
    static const char in[] = " in ";
    size_t need = sizeof head + 16 + sizeof in + 16 + key.len + 4;
    char *text = arena_alloc(need, 1), *t = text;
    for (const char *c = head; *c; c++) *t++ = *c;
    for (const char *c = names[pattern]; *c; c++) *t++ = *c;
    for (const char *c = in; *c; c++) *t++ = *c;
    for (const char *c = where; *c; c++) *t++ = *c;
    if (key.ptr) {
        *t++ = '[';
        for (size_t i = 0; i < key.len; i++) *t++ = key.ptr[i];
        *t++ = ']';
    }
    *t = 0;
    return text;
}

verdict_t interceptor_check(str_t plugin, str_t kind, str_t resource, const detail_t *details,
                            size_t n_details) {
    (void)plugin;
    (void)kind;
    int found = find_secret(resource.ptr, resource.len);
    if (found >= 0) return (verdict_t){on_match, reason(found, "resource", (str_t){0, 0})};
    for (size_t i = 0; i < n_details; i++) {
        found = find_secret(details[i].value.ptr, details[i].value.len);
        if (found < 0) found = find_secret(details[i].key.ptr, details[i].key.len);
        if (found >= 0) return (verdict_t){on_match, reason(found, "details", details[i].key)};
    }
    return (verdict_t){VERDICT_ALLOW, 0};
}
