/* libFuzzer target for the safetensors parser (built with -DSHERL_FUZZ=ON under Clang; not run
 * by ctest). Run: ./fuzz_safetensors -max_total_time=60 [corpus_dir]
 *
 * The input is the whole file image. A successful parse must be consistent: every tensor lies
 * inside the input and every convertible tensor can be read as fp32. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    safetensors_file f;
    sherl_status st = safetensors_parse(&f, data, size, "fuzz.safetensors");
    if (st.code != SHERL_OK) {
        if (st.msg[0] == '\0' || f.tensors != NULL)
            abort();
        return 0;
    }
    for (int i = 0; i < f.n_tensors; i++) {
        const st_tensor *t = &f.tensors[i];
        if (t->data < data || t->data + t->nbytes > data + size)
            abort();
        if (safetensors_find(&f, t->name) != t)
            abort();
        if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
            continue;
        float *dst = malloc(t->numel ? (size_t)t->numel * sizeof(float) : 1);
        if (!dst)
            continue;
        st = safetensors_read_f32(&f, t->name, dst, t->ndim, t->shape);
        free(dst);
        if (st.code != SHERL_OK)
            abort();
    }
    safetensors_close(&f);
    return 0;
}
