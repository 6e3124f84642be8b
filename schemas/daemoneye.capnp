# DaemonEye wire contract: the one source of every message shape.
#
# Every bus message is a ZeroMQ multipart [topic, envelope]; `envelope` is one
# `Envelope` in the standard unpacked Cap'n Proto serialisation. Any program that
# loads this file with a Cap'n Proto library can decode every message on the bus.
#
# Evolution: fields are only ever added (new ordinals), never renumbered or
# removed. `Envelope.schemaVersion` changes only when old readers can no longer
# understand new messages.
@0xf49334c4a2b65621;

const schemaVersion :UInt16 = 1;

struct Envelope {
  schemaVersion @0 :UInt16;
  sourceId @1 :Text;        # "collector@host", "broker@host", ...
  bootId @2 :Text;          # random per process start; tells a restart from a gap
  seq @3 :UInt64;           # monotonic per (sourceId, stream); stream = topic's first two labels
  sentNs @4 :Int64;         # sender's wall clock, ns since the Unix epoch

  body :union {
    empty @5 :Void;
    processEvent @6 :ProcessEvent;
    processEventBatch @7 :ProcessEventBatch;
    heartbeat @8 :Heartbeat;
    registration @9 :Registration;
    alert @10 :Alert;
    auditRecord @11 :AuditRecord;
    checkpoint @12 :Checkpoint;
    rpcRequest @13 :RpcRequest;
    rpcReply @14 :RpcReply;
    collectorNotice @15 :CollectorNotice;
  }
}

enum Severity {
  info @0;
  low @1;
  medium @2;
  high @3;
  critical @4;
}

# One process as seen at one moment. Field meanings follow osquery's `processes`
# table where one exists (start time in seconds since the epoch, sizes in bytes).
struct ProcessRecord {
  pid @0 :UInt32;
  ppid @1 :UInt32;
  startTicks @2 :UInt64;      # /proc/<pid>/stat field 22: with pid, the process identity
  startTime @3 :Float64;      # seconds since the Unix epoch
  name @4 :Text;              # comm (kernel-truncated to 15 bytes on Linux)
  exePath @5 :Text;
  cmdline @6 :List(Text);     # argv
  cwd @7 :Text;
  root @8 :Text;
  uid @9 :UInt32;
  gid @10 :UInt32;
  euid @11 :UInt32;
  egid @12 :UInt32;
  suid @13 :UInt32;
  sgid @14 :UInt32;
  loginUid @15 :UInt32;       # audit login uid (/proc/<pid>/loginuid); 4294967295 when unset
  username @16 :Text;
  state @17 :Text;            # single-letter kernel state (R, S, D, Z, ...)
  threads @18 :UInt32;
  nice @19 :Int32;
  pgroup @20 :UInt32;
  sessionId @21 :UInt32;
  userTimeMs @22 :UInt64;
  systemTimeMs @23 :UInt64;
  residentBytes @24 :UInt64;
  virtualBytes @25 :UInt64;
  diskReadBytes @26 :UInt64;
  diskWriteBytes @27 :UInt64;
  sha256 @28 :Text;           # hex; empty until hashed
  exeDeleted @29 :Bool;
  onDisk @30 :Int8 = -1;      # osquery semantics: 1 on disk, 0 not, -1 unknown (default)
  exeDevice @31 :UInt64;
  exeInode @32 :UInt64;
  exeSize @33 :UInt64;
  exeMtimeNs @34 :Int64;
  exeChangedAfterExec @35 :Bool;
  cgroupPath @36 :Text;
  containerId @37 :Text;
  pidNamespace @38 :UInt64;   # inode of /proc/<pid>/ns/pid; tells collectors' namespaces apart
  accessible @39 :Bool;       # false when part of the record could not be read
  tty @40 :Text;
  env @41 :List(EnvVar);      # the few variables that matter for detection (procfs.ENV_NAMES)
}

# One environment variable of a process, read from /proc/<pid>/environ at exec.
struct EnvVar {
  name @0 :Text;
  value @1 :Text;
}

enum EventKind {
  start @0;
  stop @1;
  modify @2;
  suspicious @3;
}

enum EventSource {
  snapshot @0;
  netlink @1;
  psutil @2;
}

struct ProcessEvent {
  kind @0 :EventKind;
  source @1 :EventSource;
  timeNs @2 :Int64;           # when the collector observed it
  record @3 :ProcessRecord;
  previous @4 :ProcessRecord; # set for modify
  changedFields @5 :List(Text);
  reason @6 :Text;            # suspicious: which heuristic; start, modify: "argv_lost: <why>"
  severity @7 :Severity;      # suspicious: how bad
  runtimeNs @8 :Int64;        # stop: how long the process lived, when known
  exitCode @9 :Int32;         # stop: from the kernel, when known
  hostname @10 :Text;
}

struct ProcessEventBatch {
  events @0 :List(ProcessEvent);
}

struct Metric {
  name @0 :Text;
  value @1 :Float64;
}

# The last seq a source published on one of its streams: a subscriber whose own last
# seq of that stream is lower lost the stream's tail (no later message will show it).
struct StreamPosition {
  stream @0 :Text;            # "events.process", "alerts.high", ...
  lastSeq @1 :UInt64;
}

struct Heartbeat {
  service @0 :Text;           # "broker", "collector", ...
  serviceId @1 :Text;
  pid @2 :UInt32;
  hostname @3 :Text;
  state @4 :Text;             # "running", "degraded", "stopping"
  intervalMs @5 :UInt32;
  uptimeS @6 :Float64;
  eventsPerSec @7 :Float64;
  queueDepth @8 :UInt64;
  rssBytes @9 :UInt64;
  cpuPercent @10 :Float64;
  metrics @11 :List(Metric);
  notes @12 :List(Text);      # e.g. why a service is degraded
  streams @13 :List(StreamPosition);  # every stream this boot has sent on
}

enum RegistrationAction {
  register @0;
  deregister @1;
  unhealthy @2;
  healthy @3;
  removed @4;
}

struct Registration {
  action @0 :RegistrationAction;
  service @1 :Text;
  serviceId @2 :Text;
  pid @3 :UInt32;
  hostname @4 :Text;
  bootId @5 :Text;
  heartbeatIntervalMs @6 :UInt32;
  rpcVerbs @7 :List(Text);
  startedNs @8 :Int64;
  reason @9 :Text;
}

struct Alert {
  alertId @0 :Text;
  ruleId @1 :Text;
  ruleName @2 :Text;
  severity @3 :Severity;
  title @4 :Text;
  description @5 :Text;
  process @6 :ProcessRecord;
  rowJson @7 :Text;           # the matching row, as JSON
  dedupKey @8 :Text;
  firstSeenNs @9 :Int64;
  lastSeenNs @10 :Int64;
  count @11 :UInt32;
  tags @12 :List(Text);
  timeNs @13 :Int64;
  hostname @14 :Text;
  ancestry @15 :List(Ancestor);  # the process's parent first, up to detector.ancestry_depth
}

# One ancestor of an alert's process, as the detector knew it when the alert was built:
# from its live table, its recent exits, or its process history (an ancestor that
# exited milliseconds after its exec is still named).
struct Ancestor {
  pid @0 :UInt32;
  ppid @1 :UInt32;
  startTicks @2 :UInt64;
  startTime @3 :Float64;      # seconds since the Unix epoch
  name @4 :Text;
  exePath @5 :Text;
  cmdline @6 :List(Text);     # argv
  uid @7 :UInt32;
  username @8 :Text;
  sessionId @9 :UInt32;
  exited @10 :Bool;           # no longer running when the alert was built
  source @11 :Text;           # "live", "exited" (recent exits) or "history" (RocksDB)
}

struct AuditRecord {
  actor @0 :Text;             # source id of who did it
  action @1 :Text;            # "rule.load", "service.start", "config.change", ...
  subject @2 :Text;           # what it was done to
  detailJson @3 :Text;
  timeNs @4 :Int64;
}

struct Checkpoint {
  origin @0 :Text;
  treeSize @1 :UInt64;
  rootHash @2 :Data;
  timestampNs @3 :Int64;
  signedNote @4 :Text;        # C2SP signed-note text
}

struct RpcRequest {
  requestId @0 :UInt64;
  target @1 :Text;            # "control.broker", "control.collector.<id>", ...
  verb @2 :Text;
  deadlineNs @3 :Int64;       # wall clock; a server drops requests already past it
  paramsJson @4 :Text;
  payload @5 :Data;
  payloads @6 :List(Data);    # e.g. bus frames forwarded by an uplink, verbatim
}

struct RpcReply {
  requestId @0 :UInt64;
  ok @1 :Bool;
  errorCode @2 :Text;         # "timeout", "unknown_target", "unknown_verb", "bad_request", "failed"
  error @3 :Text;
  resultJson @4 :Text;
  payloads @5 :List(Data);    # e.g. replayed envelopes, verbatim
}

struct CollectorNotice {
  kind @0 :Text;              # "degraded", "lost_events", "wal_cut", "stats", ...
  message @1 :Text;
  count @2 :UInt64;
  detailJson @3 :Text;
}
