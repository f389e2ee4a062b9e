"""Stage 2c's load: the streaming client, load-generator actors, the round schedule, the in-process reference."""
