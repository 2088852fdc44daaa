/* Files written so that a crash at any moment leaves either the old or the new content:
 * temp file in the same folder, fsync, rename, fsync the folder. */
#ifndef SHERL_FSUTIL_H
#define SHERL_FSUTIL_H

#include "json_util.h"
#include "status.h"

#define FS_PATH_MAX 4096

/* mkdir -p (mode 0755). */
sherl_status fs_mkdir_p(const char *path);
sherl_status fs_write_atomic(const char *path, const char *text);
sherl_status fs_copy_atomic(const char *src, const char *dst);

#endif
