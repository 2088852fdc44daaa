/* Hugging Face config.json for BERT-family encoders. */
#ifndef SHERL_HF_CONFIG_H
#define SHERL_HF_CONFIG_H

#include <stddef.h>

#include "status.h"

typedef enum { HF_MODEL_BERT = 0 } hf_model_type;

typedef struct {
    hf_model_type model_type;
    char model_type_name[32];
    int vocab_size;
    int hidden_size;
    int num_hidden_layers;
    int num_attention_heads;
    int intermediate_size;
    int max_position_embeddings;
    int type_vocab_size;
    int pad_token_id;
    float layer_norm_eps;
} hf_config;

/* Parses and validates; every error names the field, its value and what was expected. */
sherl_status hf_config_parse(hf_config *cfg, const char *json, size_t len, const char *label);
sherl_status hf_config_load(hf_config *cfg, const char *path);

#endif
