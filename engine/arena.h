/* Arenas: one backend allocation per job component, carved into the buffers it holds.
 *
 * The same layout code runs twice: first on a measuring arena (no memory, it only adds up
 * the bytes each buffer takes, 64-byte aligned), then on a real arena of exactly that size.
 * That is what makes the memory planner exact: the planner runs the measuring pass, the
 * trainer both, so the planned number is the allocated number by construction. */
#ifndef SHERL_ARENA_H
#define SHERL_ARENA_H

#include <stddef.h>

#include "kernels.h"
#include "status.h"

#define SHERL_ARENA_ALIGN 64

typedef struct {
    const sherl_backend *be; /* NULL while measuring */
    char *base;
    size_t cap, used;
    int overflow;            /* a take did not fit: a layout bug, reported by arena_check */
} sherl_arena;

/* A measuring arena: takes return NULL and only count. */
void arena_measure(sherl_arena *a);
/* A real arena of `bytes` (zeroed) on the backend. */
sherl_status arena_alloc(sherl_arena *a, const sherl_backend *be, size_t bytes, const char *what);
void arena_release(sherl_arena *a);
/* The next `bytes` of the arena (rounded up to SHERL_ARENA_ALIGN); NULL while measuring. */
void *arena_take(sherl_arena *a, size_t bytes);
float *arena_floats(sherl_arena *a, size_t n);
int32_t *arena_ints(sherl_arena *a, size_t n);
size_t arena_round(size_t bytes);
/* What a glibc malloc of `bytes` occupies: the request plus its 8-byte header, in 16-byte
 * granules, at least 32 bytes. For host-side lines of the memory plan. */
size_t arena_malloc_size(size_t bytes);
/* SHERL_EINTERNAL when the layout and its measure disagreed: a take overflowed the arena, or
 * the layout used less than was measured. */
sherl_status arena_check(const sherl_arena *a, const char *what);

#endif
