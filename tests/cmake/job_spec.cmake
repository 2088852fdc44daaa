# Job spec (engine/job_spec.c): the full and minimal specs, every field's validation, path
# resolution, loading from a file, the round trip through job_spec_to_json and seeded mutations
# of a valid spec (must never crash, also under SHERL_SANITIZE=ON). Included from
# tests/CMakeLists.txt.
sherl_unit_test(test_job_spec SOURCES ${SHERL_TEST_DIR}/unit/test_job_spec.c TIMEOUT 120)
