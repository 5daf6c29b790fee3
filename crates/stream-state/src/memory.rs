//! The `memory` backend: in-process state, gone when the process ends. It lives in
//! `stream-core` (the orchestrator registers it by default) and is re-exported here so
//! every backend can be reached from one crate.

pub use stream_core::streaming::{MemoryStateStore, MemoryStateStoreProvider};
