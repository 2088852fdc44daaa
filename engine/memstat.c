#include "memstat.h"

#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int memstat_read(memstat *m)
{
    memset(m, 0, sizeof *m);
    FILE *f = fopen("/proc/self/status", "r");
    if (!f)
        return -1;
    char line[256];
    int found = 0;
    while (fgets(line, sizeof line, f)) {
        unsigned long long kb;
        if (sscanf(line, "VmRSS: %llu kB", &kb) == 1)
            m->rss = (size_t)kb * 1024, found |= 1;
        else if (sscanf(line, "VmHWM: %llu kB", &kb) == 1)
            m->hwm = (size_t)kb * 1024, found |= 2;
    }
    fclose(f);
    return found == 3 ? 0 : -1;
}

int memstat_reset_peak(void)
{
    int fd = open("/proc/self/clear_refs", O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t w = write(fd, "5", 1);
    close(fd);
    return w == 1 ? 0 : -1;
}
