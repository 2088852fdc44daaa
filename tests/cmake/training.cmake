sherl_python_fixture(sherl_reference ${SHERL_TEST_DIR}/oracle/sherl_reference.py ${SHERL_TEST_WORK}/sherl)
sherl_unit_test(test_sherl_oracle SOURCES ${SHERL_TEST_DIR}/oracle/test_sherl_oracle.c
  FIXTURES sherl_reference TIMEOUT 300)

# The trainer on a resident, shared backbone (what the daemon does): same parameters as with
# its own copy; a backbone that is not the spec's is refused. And the trainer on device memory
# (a guarded CPU backend the host cannot touch): same parameters as on the CPU. Real MiniLM.
sherl_unit_test(test_trainer_shared SOURCES ${SHERL_TEST_DIR}/unit/test_trainer_shared.c
  ${SHERL_TEST_DIR}/unit/guarded_backend.c TIMEOUT 900)
