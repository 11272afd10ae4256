"""The logic layer: what agents, the scheduler and the workers do, as plain functions over a
connection. Shared by the API, the scheduler, the workers, the CLI and the MCP server; it reads
and writes through `pao.store` and raises `pao.errors`."""
