/* The markdown provider: the renderer and the ABI glue's shared pieces. */
#ifndef ASTRID_MARKDOWN_H
#define ASTRID_MARKDOWN_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    const char *ptr;
    size_t len;
} str_t;

/* The HTML for `text`, in the arena; on failure sets *error and returns {0, 0}. */
str_t markdown_to_html(str_t text, str_t *error);

void *arena_alloc(size_t size, size_t align);

#endif
