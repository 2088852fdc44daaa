/* libFuzzer target for the config.json parser (built with -DSHERL_FUZZ=ON under Clang; not run
 * by ctest). Run: ./fuzz_hf_config -max_total_time=60 [corpus_dir]
 *
 * A successful parse must satisfy the documented bounds. */
#include <stdint.h>
#include <stdlib.h>

#include "hf_config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    hf_config c;
    sherl_status st = hf_config_parse(&c, (const char *)data, size, "fuzz/config.json");
    if (st.code != SHERL_OK) {
        if (st.msg[0] == '\0')
            abort();
        return 0;
    }
    if (c.vocab_size < 1 || c.hidden_size < 1 || c.num_attention_heads < 1 ||
        c.hidden_size % c.num_attention_heads != 0 || c.num_hidden_layers < 1 ||
        c.intermediate_size < 1 || c.max_position_embeddings < 1 || c.type_vocab_size < 1 ||
        c.pad_token_id < 0 || c.pad_token_id >= c.vocab_size || !(c.layer_norm_eps > 0.0f) ||
        !(c.layer_norm_eps < 1.0f) || (long long)c.vocab_size * c.hidden_size > 2147483647LL)
        abort();
    return 0;
}
