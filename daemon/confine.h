/* Path confinement: a job names files (data, backbones) by path; the daemon only opens what
 * resolves, after every symlink and "..", inside one of its configured data roots. */
#ifndef SHERLD_CONFINE_H
#define SHERLD_CONFINE_H

#include <stddef.h>

#include "status.h"

/* Resolves path (absolute, or relative to base when base is not NULL) with realpath and
 * checks that the result is one of roots[0..n) or below one (a component boundary: /data does
 * not admit /database). On success resolved (PATH_MAX bytes) holds the real path.
 * SHERL_EINVAL names `field` and says why: missing, not absolute, outside every root. */
sherl_status confine_path(const char *field, const char *path, const char *base,
                          const char (*roots)[1024], int n_roots, char *resolved);

#endif
