//! [`StateStore`]: where the device saves its token state before every request.

use crate::DeviceError;

/// Where the device keeps its token state (a file with mode 0600, the phone's keystore, ...).
///
/// `save` must be durable when it returns: the token saves its state before every request
/// leaves, so that a counter is never reused after a crash.
pub trait StateStore {
    /// Stores the serialized state, replacing the previous one.
    fn save(&mut self, state: &[u8]) -> Result<(), DeviceError>;
    /// The last saved state, if any.
    fn load(&self) -> Result<Option<Vec<u8>>, DeviceError>;
}

/// A store in memory, for tests and examples.
#[derive(Default, Debug, Clone)]
pub struct MemoryStore {
    state: Option<Vec<u8>>,
    /// How many times `save` was called.
    pub saves: usize,
}

impl StateStore for MemoryStore {
    fn save(&mut self, state: &[u8]) -> Result<(), DeviceError> {
        self.state = Some(state.to_vec());
        self.saves += 1;
        Ok(())
    }

    fn load(&self) -> Result<Option<Vec<u8>>, DeviceError> {
        Ok(self.state.clone())
    }
}
