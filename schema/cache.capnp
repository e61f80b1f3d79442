# The build-cache/v1 lockfile (`mache.lock.bin`, the OCI config blob), SPEC §2.
# Evolution rule: fields are only ever appended at the next ordinal;
# never renamed or removed.
@0xca7eca7eca7eca7e;

using Common = import "common.capnp";

struct CacheLockfile {
  meta @0 :Meta;
  sources @1 :List(SourceEntry);
  topology @2 :List(TopologyEdge);
  root @3 :Common.Hash;
}

struct Meta {
  producer @0 :Text;
  producerVersion @1 :Text;
  schemaVersion @2 :Text;
  inputProcessors @3 :List(ProcessorVersion);
  generatedAtMs @4 :UInt64;
}

struct ProcessorVersion {
  kind @0 :Text;
  version @1 :Text;
}

struct SourceEntry {
  path @0 :Text;
  inputHash @1 :Common.Hash;
  chunkHash @2 :Common.Hash;
  kind @3 :Text;
}

struct TopologyEdge {
  from @0 :Text;
  toSource @1 :Text;
}
