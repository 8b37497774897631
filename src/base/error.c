/* Error reporting: one formatted message per failure, owned by the caller. */
#include "q3r/base.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

q3r_status q3r_fail(q3r_error *err, q3r_status code, const char *fmt, ...) {
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, ap);
        va_end(ap);
        err->code = code;
    }
    return code;
}

q3r_status q3r_fail_context(q3r_error *err, const char *fmt, ...) {
    if (!err) return Q3R_EINVAL;
    char prefix[256], old[sizeof err->msg];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, err->msg, sizeof old);
    /* Truncation is acceptable here: a long message loses its tail, not its head. */
    size_t n = strlen(prefix);
    if (n > sizeof err->msg - 3) n = sizeof err->msg - 3;
    memcpy(err->msg, prefix, n);
    memcpy(err->msg + n, ": ", 2);
    size_t room = sizeof err->msg - n - 3;
    size_t m = strnlen(old, room);
    memcpy(err->msg + n + 2, old, m);
    err->msg[n + 2 + m] = '\0';
    return err->code ? err->code : Q3R_EINVAL;
}

const char *q3r_status_name(q3r_status s) {
    switch (s) {
    case Q3R_OK: return "ok";
    case Q3R_EINVAL: return "invalid argument";
    case Q3R_ENOMEM: return "out of memory";
    case Q3R_EIO: return "I/O error";
    case Q3R_EFORMAT: return "bad format";
    case Q3R_ENUMERIC: return "numerical failure";
    }
    return "unknown error";
}
