#include "status.h"

#include "kernels.h"

#include <stdarg.h>
#include <stdio.h>

sherl_status sherl_ok(void)
{
    sherl_status st = {SHERL_OK, {0}};
    return st;
}

sherl_status sherl_errorf(sherl_code code, const char *fmt, ...)
{
    sherl_status st;
    st.code = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(st.msg, sizeof st.msg, fmt, ap);
    va_end(ap);
    return st;
}

const char *sherl_code_name(sherl_code code)
{
    switch (code) {
    case SHERL_OK: return "ok";
    case SHERL_EINVAL: return "invalid argument";
    case SHERL_EIO: return "i/o error";
    case SHERL_ENOMEM: return "out of memory";
    case SHERL_EFORMAT: return "bad format";
    case SHERL_EUNSUPPORTED: return "unsupported";
    case SHERL_ECANCELLED: return "cancelled";
    case SHERL_EINTERNAL: return "internal error";
    case SHERL_EDEVICE: return "device error";
    }
    return "unknown";
}

sherl_status sherl_backend_status(const struct sherl_backend *be, const char *doing)
{
    char msg[400];
    if (!be || !be->take_error || be->take_error(msg, sizeof msg) == 0)
        return sherl_ok();
    return sherl_errorf(SHERL_EDEVICE, "%s: %s", doing, msg);
}
