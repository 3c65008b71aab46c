//! Publisher authentication primitives, with no I/O: token hashes compared in constant time,
//! Ed25519 challenge signatures verified strictly, and signed HTTP requests with a replay guard.
