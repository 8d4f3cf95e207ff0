//! The ZofToken engine: sharded in-memory token tables and the token state machine, sans-IO.
//!
//! Not built yet: this crate reserves its place in the workspace and is filled by the engine
//! issue (#3). It will consume `zoftoken-proto` for every packet and emit replies, storage
//! mutations and events; it will never do IO or read a clock.
#![forbid(unsafe_code)]
