#include "confine.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Whether real path p is root or inside it. */
static int inside(const char *p, const char *root)
{
    size_t n = strlen(root);
    while (n > 1 && root[n - 1] == '/')
        n--;
    if (strncmp(p, root, n))
        return 0;
    return p[n] == 0 || p[n] == '/' || (n == 1 && root[0] == '/');
}

sherl_status confine_path(const char *field, const char *path, const char *base,
                          const char (*roots)[1024], int n_roots, char *resolved)
{
    if (!path || !*path)
        return sherl_errorf(SHERL_EINVAL, "%s: empty path", field);
    char joined[PATH_MAX];
    if (path[0] != '/') {
        if (!base)
            return sherl_errorf(SHERL_EINVAL, "%s: '%.200s' must be an absolute path", field, path);
        if (snprintf(joined, sizeof joined, "%s/%s", base, path) >= (int)sizeof joined)
            return sherl_errorf(SHERL_EINVAL, "%s: path too long", field);
        path = joined;
    }
    if (!realpath(path, resolved))
        return sherl_errorf(SHERL_EINVAL, "%s: '%.200s': %s", field, path, strerror(errno));
    for (int i = 0; i < n_roots; i++) {
        char root_real[PATH_MAX];
        /* roots are resolved too, so a root that is itself a symlink still matches */
        const char *r = realpath(roots[i], root_real) ? root_real : roots[i];
        if (inside(resolved, r))
            return sherl_ok();
    }
    return sherl_errorf(SHERL_EINVAL, "%s: '%.200s' resolves to '%.200s', outside every data root "
                                      "(%d configured; see data-roots)",
                        field, path, resolved, n_roots);
}
