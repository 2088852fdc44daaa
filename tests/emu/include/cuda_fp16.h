// cuda_emu (see cuda_runtime.h and cuda_bf16.h)
#pragma once
#include "cuda_runtime.h"

struct __half {
    unsigned short bits;
};
