//! Durable writes for tests: one that always fails, and a commit into memory for tests of the
//! engine without storage.

use zoftoken_engine::{Batch, DurableWrite, Engine, MemoryCommit, Mutation};

/// A [`DurableWrite`] that always fails, as a full disk does: nothing is published.
#[derive(Debug, Default, Clone, Copy)]
pub struct FullDisk;

impl DurableWrite for FullDisk {
    type Error = std::io::Error;

    fn write(&mut self, _: &[&[Mutation]]) -> Result<u64, std::io::Error> {
        Err(std::io::Error::other("no space left on device"))
    }
}

/// Commits `batch` through the engine into a log in memory that is thrown away: the batch is
/// published (its tokens settled, its events counted) as a server's would be once written.
/// For tests of the engine alone; a test that looks at what was written keeps a
/// [`MemoryCommit`] of its own.
pub fn commit_in_memory(engine: &Engine, batch: &mut Batch) {
    if let Err(failed) = engine.commit(&mut MemoryCommit::default(), batch) {
        match failed.source {}
    }
}
