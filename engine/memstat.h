/* The process's resident memory from /proc/self/status, and a way to restart its high-water
 * mark, so a run can report the peak it measured next to the planner's number. */
#ifndef SHERL_MEMSTAT_H
#define SHERL_MEMSTAT_H

#include <stddef.h>

typedef struct {
    size_t rss;  /* VmRSS, bytes */
    size_t hwm;  /* VmHWM, bytes: peak RSS since start or the last memstat_reset_peak */
} memstat;

/* 0 on success; -1 when /proc is not readable (then both fields are 0). */
int memstat_read(memstat *m);
/* Resets VmHWM to the current RSS (writes 5 to /proc/self/clear_refs, Linux >= 4.0).
 * 0 on success, -1 when the kernel refused (the peak then counts from process start). */
int memstat_reset_peak(void);

#endif
