"""Job state in Redis: the key names (keys), the one writer of `job_state` and its
broadcast (store.StateStore.apply), the normalized update it applies
(job_update.JobStateUpdate), the job registry (job_mapping and its indexes), the
operator's view of a job, and the record of ignored deliveries. The only modules
that talk to Redis about jobs."""
