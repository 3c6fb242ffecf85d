"""Where tracked job ids come from: the job file, a Redis stream, the CLI and the HTTP API."""
