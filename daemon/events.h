/* The per-job event log stores each event as an encoded sherl.v1.JobEvent without its seq,
 * time and job id; those live in the store's columns. Protobuf concatenation is a merge, so a
 * stored payload becomes the wire event by prefixing the encoded header (events_frame). */
#ifndef SHERLD_EVENTS_H
#define SHERLD_EVENTS_H

#include <stddef.h>
#include <stdint.h>

#include "job_store.h"
#include "trainer.h"

enum { EV_STATE = 1, EV_PROGRESS = 2, EV_EVAL = 3, EV_MESSAGE = 4 };

/* Each returns a malloc'd payload (NULL when out of memory) and its length. */
uint8_t *events_state(job_state s, size_t *len);
uint8_t *events_message(const char *text, size_t *len);
/* A progress event or, when p->is_eval, an eval event (*kind says which). */
uint8_t *events_progress(const train_progress *p, int64_t memory_bytes, int64_t planned_bytes,
                         int *kind, size_t *len);
/* The wire JobEvent: header (seq, time_ms, job_id) + payload; malloc'd. */
uint8_t *events_frame(int64_t seq, int64_t time_ms, const char *job_id, const uint8_t *payload,
                      size_t plen, size_t *len);

#endif
