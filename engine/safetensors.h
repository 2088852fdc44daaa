/* safetensors reader and writer.
 *
 * Format: 8-byte little-endian header length N, N bytes of JSON
 * {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}},
 * then the data section; offsets are relative to the start of the data section.
 *
 * The reader validates everything before handing out a tensor: header length bound, JSON
 * syntax, dtype, shape (non-negative, no overflow), byte ranges matching shape x dtype size,
 * ranges inside the file, no overlap, no duplicate names. Every error names the tensor and the
 * problem. Files are mmapped read-only; tensor data pointers stay valid until close. */
#ifndef SHERL_SAFETENSORS_H
#define SHERL_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define SAFETENSORS_MAX_HEADER (100u * 1024u * 1024u) /* same bound as the Rust reference */
#define SAFETENSORS_MAX_DIMS 8

typedef enum {
    ST_F32 = 0,
    ST_F16,
    ST_BF16,
    ST_I64,  /* accepted so real files load (e.g. BERT's position_ids); not convertible to f32 */
    ST_I32,
    ST_U8,
    ST_BOOL,
    ST_F64,
} st_dtype;

typedef struct {
    char *name;
    st_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    int64_t numel;
    const uint8_t *data; /* points into the mapped file (or the parsed buffer) */
    size_t nbytes;
} st_tensor;

typedef struct {
    void *map;         /* mmapped file, NULL when parsed from a caller's buffer */
    size_t map_size;
    int n_tensors;
    st_tensor *tensors; /* sorted by name, for safetensors_find */
    char path[512];     /* for error messages */
    int n_metadata;
    char **metadata;    /* 2 * n_metadata strings: key, value, ...; sorted by key */
} safetensors_file;

const char *st_dtype_name(st_dtype dt);
size_t st_dtype_size(st_dtype dt);

/* Parses a whole safetensors image held in memory; buf must outlive f. */
sherl_status safetensors_parse(safetensors_file *f, const uint8_t *buf, size_t len, const char *label);
sherl_status safetensors_open(safetensors_file *f, const char *path);
void safetensors_close(safetensors_file *f);

/* NULL when absent. */
const st_tensor *safetensors_find(const safetensors_file *f, const char *name);

/* Value of "__metadata__" key `key`; NULL when absent. */
const char *safetensors_metadata(const safetensors_file *f, const char *key);

/* Copies tensor `name` into dst as fp32 (converting F16/BF16), after checking that its shape is
 * exactly shape[0..ndim). Errors name the tensor, the expected and the actual shape:
 * SHERL_EFORMAT when the tensor is missing or its shape differs, SHERL_EUNSUPPORTED for a
 * dtype that is not F32/F16/BF16. dst need not be aligned to anything beyond float. */
sherl_status safetensors_read_f32(const safetensors_file *f, const char *name, float *dst,
                                  int ndim, const int64_t *shape);

/* Writing: tensors are written in the given order, fp32 only for now, atomically
 * (temp file in the same folder + fsync + rename). metadata may be NULL or a flat
 * NULL-terminated list of key, value strings. */
typedef struct {
    const char *name;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    const float *data;
} st_write_tensor;

sherl_status safetensors_write_f32(const char *path, const st_write_tensor *tensors, int n,
                                   const char *const *metadata);

/* Half-precision conversions (round to nearest even), shared with the kernels' tests. */
float st_f16_to_f32(uint16_t h);
float st_bf16_to_f32(uint16_t h);
uint16_t st_f32_to_f16(float f);  /* overflow gives inf; NaN stays NaN (quiet) */
uint16_t st_f32_to_bf16(float f); /* NaN stays NaN (quiet) */

#endif
