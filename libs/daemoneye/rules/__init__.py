"""Detection rules shared by the detector and the console.

model (YAML rules) · tables (schema and its docs) · functions (allowed SQL functions,
osquery's extras) · validate (sqlglot + SQLite authorizer) · sandbox (the in-memory
database, authorizer, time budget, limits) · live (tables kept from process events) ·
scheduling (incremental or scheduled) · prefilter (skip a rule for a batch that no row
of could match) · judge (a screen judged in Python, as SQLite would) · engine
(differential firing) · sigma (import) · sources (users, file, process_open_sockets) ·
lineage (ancestors: recent exits, chains, the ancestor_* SQL
functions) · exceptions (named, counted exceptions and the allowlist).
"""
