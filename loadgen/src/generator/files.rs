//! What a run keeps in files besides the network: each token's next counter between runs
//! (`--counters`, continuous counters as phones send) and what the server acknowledged per
//! token (`--acked`, for the crash check).

use std::io;

use zoftoken_proto::WireState;

use super::LoadError;
use crate::tokens::TokenSet;

/// The newest answer the server gave one token (the reply to the request with the highest
/// counter), for the crash check: every reply is sent only after the changes of its receive
/// batch and of every earlier batch are durable, so the state it reports must survive a
/// `kill -9` of the server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Acked {
    /// Counter of the request answered (0: never answered).
    pub counter: u64,
    /// The token's state in the reply (a `WireState` byte).
    pub state: u8,
    /// Failed authentications left before blocking, from the reply.
    pub attempts_left: u8,
    /// Counter of the last OPEN or CLOSE sent to the token (0: none).
    pub last_change_sent: u64,
}

impl Acked {
    /// No OPEN or CLOSE was sent after the answered request: the server's state must be
    /// exactly the answered one (otherwise a later, unanswered change may or may not have
    /// been applied).
    pub fn settled(&self) -> bool {
        self.counter > 0 && self.last_change_sent <= self.counter
    }
}

/// Writes `acked` (token `first + i` of `tokens` at index `i`) as text: a `#` header, then one line
/// per token that was answered at least once:
/// `<token id hex> <index> <counter> <state> <attempts_left> <settled 0|1>`, the state by name
/// (`pending`, `closed`, `open`, `blocked`).
pub fn write_acked(
    path: &std::path::Path,
    tokens: &TokenSet,
    first: u64,
    acked: &[Acked],
) -> Result<(), LoadError> {
    use std::fmt::Write as _;
    let mut out = String::from("# token_id index counter state attempts_left settled\n");
    for (i, a) in acked.iter().enumerate().filter(|(_, a)| a.counter > 0) {
        let state = match WireState::from_byte(a.state) {
            Some(WireState::Pending) => "pending",
            Some(WireState::Closed) => "closed",
            Some(WireState::Open) => "open",
            Some(WireState::Blocked) => "blocked",
            None => "unknown",
        };
        let index = first + i as u64;
        let id = tokens.token_id(index);
        let hex: String = id.0.iter().map(|b| format!("{b:02x}")).collect();
        let _ = writeln!(
            out,
            "{hex} {index} {} {state} {} {}",
            a.counter,
            a.attempts_left,
            u8::from(a.settled())
        );
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))
}

/// Each token's next counter from `path` (absent: all 1).
pub(super) fn read_counters(path: &std::path::Path, count: u64) -> Result<Vec<u64>, LoadError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![1; count as usize]),
        Err(e) => return Err(LoadError::Config(format!("{}: {e}", path.display()))),
    };
    if bytes.len() as u64 != count * 8 {
        return Err(LoadError::Config(format!(
            "{}: holds {} counters, the token set has {count} (another set? delete the file \
             after a new `loadgen prepare`)",
            path.display(),
            bytes.len() / 8
        )));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])).max(1))
        .collect())
}

/// Writes the next counters to `path` atomically. Each token's counter written is the higher
/// of this run's and the file's: another generator that used the same file meanwhile (a
/// mistake: the two runs reuse counters, and the server drops those as replays) cannot make
/// it go back, so the next run starts above every counter either used.
pub(super) fn write_counters(path: &std::path::Path, counters: &[u64]) -> Result<(), LoadError> {
    let now = read_counters(path, counters.len() as u64).unwrap_or_default();
    let bytes: Vec<u8> = counters
        .iter()
        .enumerate()
        .map(|(i, c)| now.get(i).map_or(*c, |n| (*c).max(*n)))
        .flat_map(|c| c.to_le_bytes())
        .collect();
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| LoadError::Config(format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    #[test]
    fn counters_written_never_go_back() {
        let dir = std::env::temp_dir().join(format!("zoftoken-counters-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("counters");
        let _ = std::fs::remove_file(&path);
        assert_eq!(super::read_counters(&path, 3).unwrap(), vec![1, 1, 1]);
        super::write_counters(&path, &[5, 1, 9]).unwrap();
        // A run that started from the older file writes lower counters for some tokens.
        super::write_counters(&path, &[3, 7, 9]).unwrap();
        assert_eq!(super::read_counters(&path, 3).unwrap(), vec![5, 7, 9]);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
