#include "fsutil.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

sherl_status fs_mkdir_p(const char *path)
{
    char buf[FS_PATH_MAX + 64];
    if (strlen(path) >= sizeof buf)
        return sherl_errorf(SHERL_EINVAL, "path too long: %.80s...", path);
    memcpy(buf, path, strlen(path) + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/')
            continue;
        *p = 0;
        if (mkdir(buf, 0755) && errno != EEXIST)
            return sherl_errorf(SHERL_EIO, "cannot create %s: %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0755) && errno != EEXIST)
        return sherl_errorf(SHERL_EIO, "cannot create %s: %s", buf, strerror(errno));
    return sherl_ok();
}

/* Atomic text file: temp file in the same folder, fsync, rename, fsync the folder. */
sherl_status fs_write_atomic(const char *path, const char *text)
{
    char tmp[FS_PATH_MAX + 96];
    if (strlen(path) + 5 > sizeof tmp)
        return sherl_errorf(SHERL_EINVAL, "path too long: %.80s...", path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0)
        return sherl_errorf(SHERL_EIO, "cannot write %s: %s", tmp, strerror(errno));
    size_t len = strlen(text), off = 0;
    while (off < len) {
        ssize_t w = write(fd, text + off, len - off);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            close(fd);
            unlink(tmp);
            return sherl_errorf(SHERL_EIO, "cannot write %s: %s", tmp, strerror(errno));
        }
        off += (size_t)w;
    }
    if (fsync(fd) || close(fd)) {
        unlink(tmp);
        return sherl_errorf(SHERL_EIO, "cannot flush %s: %s", tmp, strerror(errno));
    }
    if (rename(tmp, path)) {
        unlink(tmp);
        return sherl_errorf(SHERL_EIO, "cannot rename %s to %s: %s", tmp, path, strerror(errno));
    }
    char dir[FS_PATH_MAX + 64];
    if (strlen(path) >= sizeof dir)
        return sherl_ok(); /* written; only the folder sync is skipped */
    memcpy(dir, path, strlen(path) + 1);
    char *slash = strrchr(dir, '/');
    if (slash) {
        *slash = 0;
        int dfd = open(dir[0] ? dir : "/", O_RDONLY | O_DIRECTORY);
        if (dfd >= 0) {
            fsync(dfd);
            close(dfd);
        }
    }
    return sherl_ok();
}

sherl_status fs_copy_atomic(const char *src, const char *dst)
{
    char *data;
    size_t len;
    SHERL_TRY(sherl_read_file(src, (size_t)1 << 34, &data, &len));
    char tmp[FS_PATH_MAX + 96];
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    sherl_status st = sherl_ok();
    if (fd < 0) {
        st = sherl_errorf(SHERL_EIO, "cannot write %s: %s", tmp, strerror(errno));
    } else {
        size_t off = 0;
        while (off < len && !st.code) {
            ssize_t w = write(fd, data + off, len - off);
            if (w < 0 && errno != EINTR)
                st = sherl_errorf(SHERL_EIO, "cannot write %s: %s", tmp, strerror(errno));
            else if (w > 0)
                off += (size_t)w;
        }
        if ((fsync(fd) || close(fd)) && !st.code)
            st = sherl_errorf(SHERL_EIO, "cannot flush %s: %s", tmp, strerror(errno));
        if (!st.code && rename(tmp, dst))
            st = sherl_errorf(SHERL_EIO, "cannot rename %s: %s", tmp, strerror(errno));
        if (st.code)
            unlink(tmp);
    }
    free(data);
    return st;
}
