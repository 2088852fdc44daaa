/* Error reporting for the whole engine: every fallible call returns a sherl_status.
 * The daemon turns it into a job or RPC status, so nothing here may exit() or abort()
 * on bad input. */
#ifndef SHERL_STATUS_H
#define SHERL_STATUS_H

typedef enum {
    SHERL_OK = 0,
    SHERL_EINVAL,       /* bad argument or bad input value */
    SHERL_EIO,          /* file or system call failed */
    SHERL_ENOMEM,       /* allocation failed */
    SHERL_EFORMAT,      /* malformed file content */
    SHERL_EUNSUPPORTED, /* well-formed but not something we handle */
    SHERL_ECANCELLED,   /* stopped on request */
    SHERL_EINTERNAL,    /* an invariant of ours broke: a bug, reported rather than crashed on */
    SHERL_EDEVICE,      /* the compute device failed (a CUDA or cuBLAS error, a lost GPU) */
} sherl_code;

typedef struct {
    sherl_code code;
    char msg[512];
} sherl_status;

sherl_status sherl_ok(void);
sherl_status sherl_errorf(sherl_code code, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
const char *sherl_code_name(sherl_code code);

struct sherl_backend;
/* SHERL_EDEVICE with the backend's first failure since the last check (see take_error in
 * kernels.h), prefixed by what was being done; ok when there was none. */
sherl_status sherl_backend_status(const struct sherl_backend *be, const char *doing);

#define SHERL_TRY(expr)                              \
    do {                                             \
        sherl_status sherl_try_st_ = (expr);         \
        if (sherl_try_st_.code != SHERL_OK)          \
            return sherl_try_st_;                    \
    } while (0)

#endif
