# emu_checks: cuda_emu's own test (tests/emu/emu_checks.cu), a CUDA program built exactly the way
# ops_cuda.cu is for the emulator, so that gpu_ops_emu's verdicts rest on checked semantics:
# thread coordinates, shuffles, barriers, shared memory, launch errors, graphs and the cuBLAS
# products, each against host loops, and each failure mode reported rather than computed.
set(SHERL_EMU_CHECKS_SOURCE ${CMAKE_CURRENT_BINARY_DIR}/emu_checks.cpp)
add_custom_command(OUTPUT ${SHERL_EMU_CHECKS_SOURCE}
  COMMAND ${CMAKE_COMMAND} -DIN=${CMAKE_SOURCE_DIR}/tests/emu/emu_checks.cu
          -DOUT=${SHERL_EMU_CHECKS_SOURCE} -P ${CMAKE_SOURCE_DIR}/tests/emu/translate.cmake
  DEPENDS ${CMAKE_SOURCE_DIR}/tests/emu/emu_checks.cu ${CMAKE_SOURCE_DIR}/tests/emu/translate.cmake
  COMMENT "cuda_emu: translating emu_checks.cu's launches for the CPU")
add_executable(emu_checks ${SHERL_EMU_CHECKS_SOURCE} ${CMAKE_SOURCE_DIR}/tests/emu/cuda_emu.cpp)
# the emulated headers stand where the CUDA toolkit's would; cuda_emu.cpp includes kernels.h
target_include_directories(emu_checks BEFORE PRIVATE ${CMAKE_SOURCE_DIR}/tests/emu/include)
target_include_directories(emu_checks PRIVATE ${CMAKE_SOURCE_DIR}/kernels)
# -ffp-contract=off: the host reference and the emulated kernels round alike (no fused products)
target_compile_options(emu_checks PRIVATE
  $<$<COMPILE_LANGUAGE:CXX>:-ffp-contract=off -Wall -Wextra -Wno-unused-parameter -Wno-unknown-pragmas>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${SHERL_WERROR}>>:-Werror>)
set_target_properties(emu_checks PROPERTIES CXX_STANDARD 17 CXX_STANDARD_REQUIRED ON
  CXX_EXTENSIONS OFF)
target_link_libraries(emu_checks PRIVATE Threads::Threads ${MATH_LIB})
add_test(NAME emu_checks COMMAND emu_checks)
set_tests_properties(emu_checks PROPERTIES TIMEOUT 120)
