//! ZofToken's test kit: the pieces the workspace's tests build on, written once. A
//! dev-dependency only (`publish = false`): no production crate depends on it.
//!
//! - [`authenticator`]: what a standard authenticator app does with an enrollment (the
//!   secret from base32, parameters from an `otpauth://` URI).
//! - [`clock`]: the virtual start time [`T0`] and the wall clock [`now_ms`] (for tests that
//!   run real threads and sockets).
//! - [`durable`]: durable writes for tests: [`FullDisk`] (always fails) and
//!   [`commit_in_memory`] (an engine batch committed to a log that is thrown away).
//! - [`phone`]: a paired device, the real `zoftoken-device` state machine ([`Phone`]), over
//!   any [`Link`] to a server: in process, or UDP on loopback.
//! - [`harness`]: the in-process server every engine test drives ([`Harness`]): an engine on a
//!   virtual clock whose batches go to a [`Sink`] (a [`zoftoken_engine::MemoryCommit`] log, or
//!   a [`zoftoken_storage::Store`]), the events of the committed batches, pairing and requests
//!   through [`zoftoken_engine::Engine::handle_packet`].
//! - [`postgres`]: throwaway PostgreSQL clusters ([`PgCluster`]): one per test process with a
//!   database per test, or a test's own to crash and restart.
//! - [`tls`]: a test certificate authority and a server certificate ([`make_certs`]).
//! - [`udp`]: a [`Responder`] thread answering datagrams on a loopback socket, and a phone's
//!   [`UdpLink`] to a server.
//!
//! It does not hide what a test asserts: every field of a harness and a phone is public, and
//! nothing here checks a rule of the product. A test that breaks the kit's assumptions (a
//! pairing refused, a write into memory failing) panics with a message: that is a bug of the
//! test, never an outcome to assert.
#![forbid(unsafe_code)]
#![deny(missing_docs)]
// Test support: a broken assumption is a bug of the test, reported by a panic.
#![allow(clippy::panic, clippy::expect_used, clippy::unwrap_used)]

pub mod authenticator;
pub mod clock;
pub mod durable;
pub mod harness;
pub mod phone;
pub mod postgres;
pub mod tls;
pub mod udp;

pub use clock::{now_ms, T0};
pub use durable::{commit_in_memory, FullDisk};
pub use harness::{Harness, Sink};
pub use phone::{Link, Phone, DURESS_PIN, PIN};
pub use postgres::PgCluster;
pub use tls::{make_certs, TestCerts};
pub use udp::{NoReply, Responder, UdpLink};
