# The daemon's parts (daemon/): the option table, file and flag parsing, and that
# deploy/sherld.conf.example documents every option at its default; the SQLite job store
# (round trips, paging, tenants, crash safety under SIGKILL); path confinement to the
# data roots; the tokens file and bearer-token lookups; admission's split of a plan over the
# memory pools (host memory and each device). Included from
# tests/CMakeLists.txt when the service is built.
if(SHERL_SERVICE)
  sherl_unit_test(test_config SOURCES ${SHERL_TEST_DIR}/unit/test_config.c LIBS sherld_core
    TIMEOUT 60)
  target_compile_definitions(test_config PRIVATE
    SHERL_EXAMPLE_CONFIG="${CMAKE_SOURCE_DIR}/deploy/sherld.conf.example")
  sherl_unit_test(test_job_store SOURCES ${SHERL_TEST_DIR}/unit/test_job_store.c
    LIBS sherld_core TIMEOUT 120)
  sherl_unit_test(test_auth SOURCES ${SHERL_TEST_DIR}/unit/test_auth.c LIBS sherld_core
    TIMEOUT 60)
  sherl_unit_test(test_confine SOURCES ${SHERL_TEST_DIR}/unit/test_confine.c LIBS sherld_core
    TIMEOUT 60)
  sherl_unit_test(test_admission SOURCES ${SHERL_TEST_DIR}/unit/test_admission.c
    LIBS sherld_core TIMEOUT 60)
endif()

if(SHERL_SERVICE)
  sherl_unit_test(test_rpc SOURCES ${SHERL_TEST_DIR}/unit/test_rpc.c
    LIBS sherld_core sherl_rpc_client TIMEOUT 180)
endif()
