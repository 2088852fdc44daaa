#include "arena.h"

#include <stdint.h>
#include <string.h>

size_t arena_round(size_t bytes)
{
    return (bytes + SHERL_ARENA_ALIGN - 1) & ~(size_t)(SHERL_ARENA_ALIGN - 1);
}

void arena_measure(sherl_arena *a) { memset(a, 0, sizeof *a); }

sherl_status arena_alloc(sherl_arena *a, const sherl_backend *be, size_t bytes, const char *what)
{
    memset(a, 0, sizeof *a);
    a->be = be;
    a->cap = bytes;
    if (!bytes)
        return sherl_ok();
    a->base = be->alloc(bytes);
    if (!a->base)
        return sherl_errorf(SHERL_ENOMEM, "cannot allocate %.1f MB for %s", bytes / 1e6, what);
    return sherl_ok();
}

void arena_release(sherl_arena *a)
{
    if (a->base && a->be)
        a->be->free(a->base);
    memset(a, 0, sizeof *a);
}

void *arena_take(sherl_arena *a, size_t bytes)
{
    size_t r = arena_round(bytes ? bytes : 1);
    if (!a->base) {
        a->used += r;
        return NULL;
    }
    if (r > a->cap - a->used) {
        a->overflow = 1;
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += r;
    return p;
}

float *arena_floats(sherl_arena *a, size_t n) { return arena_take(a, n * sizeof(float)); }
int32_t *arena_ints(sherl_arena *a, size_t n) { return arena_take(a, n * sizeof(int32_t)); }

sherl_status arena_check(const sherl_arena *a, const char *what)
{
    if (a->overflow)
        return sherl_errorf(SHERL_EINTERNAL, "%s: layout exceeded its measured arena of %zu bytes",
                            what, a->cap);
    /* Less is a bug too: the measuring pass (every pointer NULL) took another path than the
     * real one, so the memory plan, which is the measuring pass, is wrong. */
    if (a->base && a->used != a->cap)
        return sherl_errorf(SHERL_EINTERNAL, "%s: layout used %zu bytes of its measured arena of "
                                             "%zu: the measuring and the real layout disagree",
                            what, a->used, a->cap);
    return sherl_ok();
}

size_t arena_malloc_size(size_t bytes)
{
    size_t r = (bytes + 8 + 15) & ~(size_t)15;
    return r < 32 ? 32 : r;
}
