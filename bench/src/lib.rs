//! Benchmarks of the ZofToken codec. The benchmarks live in `benches/`; this library only
//! holds the fixtures they share. Results and how to reproduce them are in BENCHMARKS.md.
#![forbid(unsafe_code)]
