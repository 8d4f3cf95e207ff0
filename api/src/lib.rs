//! The ZofToken HTTP API for client assets (hyper), authorised by authkeys.
//!
//! Not built yet: this crate reserves its place in the workspace and is filled by the API
//! issue (#6).
#![forbid(unsafe_code)]
