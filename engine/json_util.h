/* Shared helpers for the engine's JSON files (config.json, tokenizer_config.json, the
 * safetensors header, sentence-transformers' configs): reading a bounded file, parsing with
 * cJSON into clear errors, and typed getters for fields.
 *
 * Every error is a sherl_status whose message starts with "<label>: ", the label being the file
 * path (or whatever names the text), and names the field, its value and what was expected. */
#ifndef SHERL_JSON_UTIL_H
#define SHERL_JSON_UTIL_H

#include <cJSON.h>
#include <stddef.h>

#include "status.h"

/* Reads the whole file at `path` into a fresh NUL-terminated buffer (*data, free() it; *len
 * bytes, the NUL not counted). Files larger than max_bytes are refused. Errors name the path:
 * SHERL_EIO when it cannot be opened (missing, no permission), is a directory or cannot be read;
 * SHERL_EFORMAT when it is too large. On error *data is NULL and *len 0. Used for any small
 * file, not only JSON. A pipe with a writer is read to its end; a FIFO nobody has opened for
 * writing reads as empty rather than waiting for a writer (so no reader of outside input can
 * hang, the daemon's own config and token files included). */
sherl_status sherl_read_file(const char *path, size_t max_bytes, char **data, size_t *len);

/* Parses len bytes of JSON text (need not be NUL-terminated; NUL bytes inside are refused),
 * with nothing but white space allowed after the value. On success *root holds the value
 * (cJSON_Delete it); on error it is NULL and the SHERL_EFORMAT message says why: too deep
 * (over CJSON_NESTING_LIMIT levels), or where cJSON stopped (byte offset, line and column), or
 * where trailing data begins. `what` (may be NULL) names the text in messages, e.g. "header":
 * "<label>: header is not valid JSON (...)". */
sherl_status json_parse(const char *text, size_t len, const char *label, const char *what,
                        cJSON **root);

/* SHERL_EFORMAT "<label>: [<what> is ]not a JSON object" unless root is an object. */
sherl_status json_expect_object(const cJSON *root, const char *label, const char *what);

/* sherl_read_file + json_parse + json_expect_object, the path as label: the usual way to load a
 * small JSON config file whose top level must be an object. */
sherl_status json_load_object(const char *path, size_t max_bytes, cJSON **root);

/* A short description of a JSON value for messages: the number itself, the string "..."
 * (cut at 40 bytes), true, false, null, an array, an object; "missing" for NULL. */
void json_describe(const cJSON *v, char *buf, size_t cap);

/* SHERL_EFORMAT "<label>: field '<field>' is <value>, expected <expected>". */
sherl_status json_field_error(const char *label, const char *field, const cJSON *value,
                              const char *expected);

/* Optional fields of object `obj`. When the field is absent or null, *out is left as it is
 * (preset it to the default) and the result is SHERL_OK; a present value of the wrong type or
 * out of range gives json_field_error's message. */
sherl_status json_get_bool(const cJSON *obj, const char *label, const char *field, int *out);
/* An integral number in [lo, hi] (both within int's range). */
sherl_status json_get_int(const cJSON *obj, const char *label, const char *field, long long lo,
                          long long hi, int *out);
/* Any JSON number (cJSON reads overflowing ones as +-inf). */
sherl_status json_get_number(const cJSON *obj, const char *label, const char *field, double *out);
/* A string; *out points into obj. */
sherl_status json_get_string(const cJSON *obj, const char *label, const char *field,
                             const char **out);

/* As json_get_int, but the field is required: absent gives "field '<field>' is missing
 * (expected an integer in [lo, hi])", null is a wrong value like any other. */
sherl_status json_require_int(const cJSON *obj, const char *label, const char *field,
                              long long lo, long long hi, int *out);

#endif
