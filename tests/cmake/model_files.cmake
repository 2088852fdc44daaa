# Model files: safetensors reader/writer, Hugging Face config.json and the JSON helpers they
# share (engine/safetensors.c, engine/hf_config.c, engine/json_util.c). Included from
# tests/CMakeLists.txt.

sherl_unit_test(test_safetensors SOURCES unit/test_safetensors.c TIMEOUT 120)
sherl_unit_test(test_hf_config SOURCES unit/test_hf_config.c TIMEOUT 60)
# Shared JSON helpers (engine/json_util.c): bounded file reading, parse errors, typed getters.
sherl_unit_test(test_json_util SOURCES unit/test_json_util.c TIMEOUT 60)
# Deterministic, seeded mutations (truncations, bit flips, byte replacements, oversized and
# deeply nested headers, duplicated keys). A few seconds, also under SHERL_SANITIZE=ON.
sherl_unit_test(test_fuzz_model_files SOURCES fuzz/test_fuzz_model_files.c TIMEOUT 300)

# libFuzzer targets (not part of ctest): cmake -DCMAKE_C_COMPILER=clang -DSHERL_FUZZ=ON, then
# e.g. ./fuzz_safetensors -max_total_time=60. The parsers are compiled into each target
# directly so they carry the fuzzer's coverage instrumentation.
option(SHERL_FUZZ "Build libFuzzer targets (needs Clang)" OFF)
if(SHERL_FUZZ)
  if(CMAKE_C_COMPILER_ID STREQUAL "Clang")
    set(_sherl_fuzz_flags -fsanitize=fuzzer,address,undefined -fno-omit-frame-pointer)
    foreach(_target fuzz_safetensors fuzz_hf_config)
      add_executable(${_target} fuzz/${_target}.c
        ${PROJECT_SOURCE_DIR}/engine/safetensors.c
        ${PROJECT_SOURCE_DIR}/engine/hf_config.c
        ${PROJECT_SOURCE_DIR}/engine/json_util.c
        ${PROJECT_SOURCE_DIR}/engine/status.c)
      target_include_directories(${_target} PRIVATE ${PROJECT_SOURCE_DIR}/engine)
      target_compile_options(${_target} PRIVATE ${_sherl_fuzz_flags})
      target_link_options(${_target} PRIVATE ${_sherl_fuzz_flags})
      target_link_libraries(${_target} PRIVATE PkgConfig::CJSON ${MATH_LIB})
    endforeach()
  else()
    message(WARNING "SHERL_FUZZ needs Clang (CMAKE_C_COMPILER_ID is ${CMAKE_C_COMPILER_ID}): "
                    "fuzz targets not built")
  endif()
endif()
