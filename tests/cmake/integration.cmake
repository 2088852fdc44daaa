add_test(NAME train_resume COMMAND ${SHERL_PYTHON} ${SHERL_TEST_DIR}/integration/train_resume.py
  $<TARGET_FILE:sherl_cli> ${SHERL_MINILM_DIR} ${SHERL_TEST_WORK}/train_resume)
set_tests_properties(train_resume PROPERTIES TIMEOUT 600)
