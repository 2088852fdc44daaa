// cuda_emu (see cuda_runtime.h): the 16-bit types, as storage only (ops_cuda.cu converts with
// kernels.h's own functions; tensor-core fragments read them through mma.h).
#pragma once
#include "cuda_runtime.h"

struct __nv_bfloat16 {
    unsigned short bits;
};
