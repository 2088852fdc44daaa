# Dataset readers (engine/dataset.c): JSONL and TSV loading, label maps, batches, shuffling.
# Included from tests/CMakeLists.txt.
sherl_unit_test(test_dataset SOURCES ${SHERL_TEST_DIR}/unit/test_dataset.c TIMEOUT 120)
