/* markdown: a small Markdown-to-HTML renderer (no libc).
 *
 * Blocks: ATX headings (# .. ######), paragraphs (lines joined), unordered
 * lists (- or * items), ordered lists (1. items), fenced code (```), and
 * blank lines between them. Inline: `code`, **strong**, *em* / _em_, and
 * [text](url). Everything else is text, HTML-escaped. Output goes to a
 * buffer in the arena that doubles when full.
 */
#include "markdown.h"

typedef struct {
    char *buf;
    size_t len, cap;
} out_t;

static void put(out_t *o, const char *s, size_t n) {
    if (o->len + n > o->cap) {
        size_t cap = o->cap * 2 + n;
        char *grown = arena_alloc(cap, 1);
        for (size_t i = 0; i < o->len; i++) grown[i] = o->buf[i];
        o->buf = grown;
        o->cap = cap;
    }
    for (size_t i = 0; i < n; i++) o->buf[o->len + i] = s[i];
    o->len += n;
}

static size_t cstr_len(const char *s) {
    size_t n = 0;
    while (s[n]) n++;
    return n;
}

static void puts_(out_t *o, const char *s) { put(o, s, cstr_len(s)); }

static void put_escaped(out_t *o, const char *s, size_t n) {
    for (size_t i = 0; i < n; i++) {
        switch (s[i]) {
        case '&': puts_(o, "&amp;"); break;
        case '<': puts_(o, "&lt;"); break;
        case '>': puts_(o, "&gt;"); break;
        case '"': puts_(o, "&quot;"); break;
        default: put(o, &s[i], 1);
        }
    }
}

static size_t find(const char *s, size_t from, size_t n, char c) {
    for (size_t i = from; i < n; i++)
        if (s[i] == c) return i;
    return n;
}

static size_t find2(const char *s, size_t from, size_t n, char c) {
    for (size_t i = from; i + 1 < n; i++)
        if (s[i] == c && s[i + 1] == c) return i;
    return n;
}

static void inline_(out_t *o, const char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        char c = s[i];
        if (c == '`') {
            size_t end = find(s, i + 1, n, '`');
            if (end < n) {
                puts_(o, "<code>");
                put_escaped(o, s + i + 1, end - i - 1);
                puts_(o, "</code>");
                i = end + 1;
                continue;
            }
        } else if (c == '*' && i + 1 < n && s[i + 1] == '*') {
            size_t end = find2(s, i + 2, n, '*');
            if (end < n && end > i + 2) {
                puts_(o, "<strong>");
                inline_(o, s + i + 2, end - i - 2);
                puts_(o, "</strong>");
                i = end + 2;
                continue;
            }
        } else if (c == '*' || c == '_') {
            size_t end = find(s, i + 1, n, c);
            if (end < n && end > i + 1) {
                puts_(o, "<em>");
                inline_(o, s + i + 1, end - i - 1);
                puts_(o, "</em>");
                i = end + 1;
                continue;
            }
        } else if (c == '[') {
            size_t close = find(s, i + 1, n, ']');
            if (close + 1 < n && s[close + 1] == '(') {
                size_t paren = find(s, close + 2, n, ')');
                if (paren < n) {
                    puts_(o, "<a href=\"");
                    put_escaped(o, s + close + 2, paren - close - 2);
                    puts_(o, "\">");
                    inline_(o, s + i + 1, close - i - 1);
                    puts_(o, "</a>");
                    i = paren + 1;
                    continue;
                }
            }
        }
        put_escaped(o, &s[i], 1);
        i++;
    }
}

typedef struct {
    const char *ptr;
    size_t len;
} line_t;

static int blank(line_t l) {
    for (size_t i = 0; i < l.len; i++)
        if (l.ptr[i] != ' ' && l.ptr[i] != '\t' && l.ptr[i] != '\r') return 0;
    return 1;
}

static size_t heading_level(line_t l) {
    size_t k = 0;
    while (k < l.len && l.ptr[k] == '#') k++;
    return (k >= 1 && k <= 6 && k < l.len && l.ptr[k] == ' ') ? k : 0;
}

static int bullet(line_t l) {
    return l.len >= 2 && (l.ptr[0] == '-' || l.ptr[0] == '*') && l.ptr[1] == ' ';
}

/* Length of "N. " at the start of an ordered item, else 0. */
static size_t ordinal(line_t l) {
    size_t k = 0;
    while (k < l.len && l.ptr[k] >= '0' && l.ptr[k] <= '9') k++;
    return (k > 0 && k + 1 < l.len && l.ptr[k] == '.' && l.ptr[k + 1] == ' ') ? k + 2 : 0;
}

static int fence(line_t l) {
    return l.len >= 3 && l.ptr[0] == '`' && l.ptr[1] == '`' && l.ptr[2] == '`';
}

static line_t trim_end(line_t l) {
    while (l.len && (l.ptr[l.len - 1] == '\r' || l.ptr[l.len - 1] == ' ')) l.len--;
    return l;
}

str_t markdown_to_html(str_t text, str_t *error) {
    (void)error;
    out_t o = {arena_alloc(text.len * 2 + 64, 1), 0, text.len * 2 + 64};
    const char *p = text.ptr, *end = text.ptr + text.len;
    enum { NONE, PARA, UL, OL, CODE } open = NONE;
    while (p < end) {
        const char *nl = p;
        while (nl < end && *nl != '\n') nl++;
        line_t l = trim_end((line_t){p, (size_t)(nl - p)});
        p = nl < end ? nl + 1 : end;
        if (open == CODE) {
            if (fence(l)) {
                puts_(&o, "</code></pre>\n");
                open = NONE;
            } else {
                put_escaped(&o, l.ptr, l.len);
                puts_(&o, "\n");
            }
            continue;
        }
        size_t level = heading_level(l), ord = ordinal(l);
        int item = bullet(l);
        int continues = (open == PARA && !blank(l) && !level && !item && !ord && !fence(l))
                        || (open == UL && item) || (open == OL && ord);
        if (!continues && open != NONE) {
            puts_(&o, open == PARA ? "</p>\n" : open == UL ? "</ul>\n" : "</ol>\n");
            open = NONE;
        }
        if (blank(l)) continue;
        if (fence(l)) {
            puts_(&o, "<pre><code>");
            open = CODE;
        } else if (level) {
            char tag[5] = {'<', 'h', (char)('0' + level), '>', 0};
            puts_(&o, tag);
            inline_(&o, l.ptr + level + 1, l.len - level - 1);
            char close[6] = {'<', '/', 'h', (char)('0' + level), '>', 0};
            puts_(&o, close);
            puts_(&o, "\n");
        } else if (item || ord) {
            if (open == NONE) {
                puts_(&o, item ? "<ul>\n" : "<ol>\n");
                open = item ? UL : OL;
            }
            size_t skip = item ? 2 : ord;
            puts_(&o, "<li>");
            inline_(&o, l.ptr + skip, l.len - skip);
            puts_(&o, "</li>\n");
        } else {
            if (open == PARA) {
                puts_(&o, "\n");
            } else {
                puts_(&o, "<p>");
                open = PARA;
            }
            inline_(&o, l.ptr, l.len);
        }
    }
    if (open != NONE)
        puts_(&o, open == PARA ? "</p>\n" : open == UL ? "</ul>\n"
                  : open == OL ? "</ol>\n" : "</code></pre>\n");
    return (str_t){o.buf, o.len};
}
