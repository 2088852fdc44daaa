# cmake -DIN=ops_cuda.cu -DOUT=ops_cuda_emu.cpp -P translate.cmake
# Rewrites what a C++ compiler cannot read in a CUDA file for cuda_emu (include/cuda_runtime.h):
#   k<<<grid, block, shared, stream>>>(args)  ->  k| emu::config(grid, block, shared, stream) | emu::args(args)
#   extern __shared__ [__align__(N)] T name[]; ->  T *name = (T *)emu::dynamic_shared();
#   NULL                                      ->  nullptr (a launch argument keeps its type)
# and points the compiler's messages at the original lines.
file(READ "${IN}" text)
string(REPLACE "<<<" "| emu::config(" text "${text}")
string(REPLACE ">>>(" ") | emu::args(" text "${text}")
string(REGEX REPLACE "extern __shared__ (__align__\\([0-9]+\\) )?([A-Za-z_][A-Za-z_0-9 ]*[A-Za-z_0-9]) ([A-Za-z_][A-Za-z_0-9]*)\\[\\];"
       "\\2 *\\3 = (\\2 *)emu::dynamic_shared();" text "${text}")
string(REGEX REPLACE "([^A-Za-z0-9_])NULL([^A-Za-z0-9_])" "\\1nullptr\\2" text "${text}")
foreach(left ">>>" "extern __shared__")
  string(FIND "${text}" "${left}" at)
  if(NOT at EQUAL -1)
    message(FATAL_ERROR "translate.cmake: '${left}' in ${IN} is in a form it cannot rewrite "
      "(a launch must read name<<<config>>>(args); a dynamic shared array extern __shared__ T name[];)")
  endif()
endforeach()
file(WRITE "${OUT}" "#line 1 \"${IN}\"\n${text}")
