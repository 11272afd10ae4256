"""pao side by side with pgqueuer and procrastinate on one PostgreSQL (`make bench-peers`)."""
