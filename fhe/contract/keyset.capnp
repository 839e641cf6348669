# The part of Concrete's wire protocol that describes a server keyset (evaluation keys), enough to
# read each key's description without touching its payload. Field ordinals and types follow
# Concrete's protocol (concrete-protocol.capnp), which fixes the wire layout; fields after the
# last one read here are left out, and payloads and moduli are opaque pointers.
@0xb7c5d1e2a3f40917;

enum KeyType {
  binary @0;
  ternary @1;
}

enum Compression {
  none @0;
  seed @1;
  paillier @2;
}

struct LweBootstrapKeyParams {
  levelCount @0 :UInt32;
  baseLog @1 :UInt32;
  glweDimension @2 :UInt32;
  polynomialSize @3 :UInt32;
  variance @4 :Float64;
  integerPrecision @5 :UInt32;
  modulus @6 :AnyPointer;
  keyType @7 :KeyType;
  inputLweDimension @8 :UInt32;
}

struct LweBootstrapKeyInfo {
  id @0 :UInt32;
  inputId @1 :UInt32;
  outputId @2 :UInt32;
  params @3 :LweBootstrapKeyParams;
  compression @4 :Compression;
}

struct LweKeyswitchKeyParams {
  levelCount @0 :UInt32;
  baseLog @1 :UInt32;
  variance @2 :Float64;
  integerPrecision @3 :UInt32;
  modulus @4 :AnyPointer;
  keyType @5 :KeyType;
  inputLweDimension @6 :UInt32;
  outputLweDimension @7 :UInt32;
}

struct LweKeyswitchKeyInfo {
  id @0 :UInt32;
  inputId @1 :UInt32;
  outputId @2 :UInt32;
  params @3 :LweKeyswitchKeyParams;
  compression @4 :Compression;
}

struct PackingKeyswitchKeyParams {
  levelCount @0 :UInt32;
  baseLog @1 :UInt32;
  glweDimension @2 :UInt32;
  polynomialSize @3 :UInt32;
  inputLweDimension @4 :UInt32;
  innerLweDimension @5 :UInt32;
  variance @6 :Float64;
  integerPrecision @7 :UInt32;
  modulus @8 :AnyPointer;
  keyType @9 :KeyType;
}

struct PackingKeyswitchKeyInfo {
  id @0 :UInt32;
  inputId @1 :UInt32;
  outputId @2 :UInt32;
  params @3 :PackingKeyswitchKeyParams;
  compression @4 :Compression;
}

struct Payload {
  # Concrete declares List(Data); List(UInt8) has the same wire layout and lets a reader take
  # each blob's length without copying its bytes.
  data @0 :List(List(UInt8));
}

struct LweBootstrapKey {
  info @0 :LweBootstrapKeyInfo;
  payload @1 :Payload;
}

struct LweKeyswitchKey {
  info @0 :LweKeyswitchKeyInfo;
  payload @1 :Payload;
}

struct PackingKeyswitchKey {
  info @0 :PackingKeyswitchKeyInfo;
  payload @1 :Payload;
}

struct ServerKeyset {
  lweBootstrapKeys @0 :List(LweBootstrapKey);
  lweKeyswitchKeys @1 :List(LweKeyswitchKey);
  packingKeyswitchKeys @2 :List(PackingKeyswitchKey);
}
