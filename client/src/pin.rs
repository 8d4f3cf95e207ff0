//! Where PINs come from: the terminal without echo, lines of a reader (`--pin-stdin`), or a
//! fixed list (tests and scripts). PINs are held in [`Zeroizing`] strings and never printed.

use std::collections::VecDeque;
use std::io::BufRead;

use zeroize::Zeroizing;

use crate::ClientError;

/// A source of PINs. `prompt` says what is asked ("PIN: ", "New PIN: ", …); sources without
/// a terminal ignore it.
pub trait PinSource {
    /// Reads one PIN.
    fn read_pin(&mut self, prompt: &str) -> Result<Zeroizing<String>, ClientError>;
}

/// Asks on the controlling terminal without echo (`rpassword`).
#[derive(Clone, Copy, Debug, Default)]
pub struct TerminalPins;

impl PinSource for TerminalPins {
    fn read_pin(&mut self, prompt: &str) -> Result<Zeroizing<String>, ClientError> {
        rpassword::prompt_password(prompt)
            .map(Zeroizing::new)
            .map_err(|e| {
                ClientError::PinInput(format!("no terminal to ask on ({e}); use --pin-stdin"))
            })
    }
}

/// Reads one PIN per line from a reader (standard input for `--pin-stdin`); the line end is
/// removed.
#[derive(Debug)]
pub struct ReaderPins<R> {
    reader: R,
}

impl<R: BufRead> ReaderPins<R> {
    /// PINs from `reader`, one per line.
    pub fn new(reader: R) -> ReaderPins<R> {
        ReaderPins { reader }
    }
}

impl<R: BufRead> PinSource for ReaderPins<R> {
    fn read_pin(&mut self, _prompt: &str) -> Result<Zeroizing<String>, ClientError> {
        let mut line = Zeroizing::new(String::new());
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|e| ClientError::PinInput(e.to_string()))?;
        if n == 0 {
            return Err(ClientError::PinInput("end of input".to_owned()));
        }
        let len = line.trim_end_matches(['\r', '\n']).len();
        line.truncate(len);
        Ok(line)
    }
}

/// A fixed list of PINs, handed out in order (tests, scripts).
#[derive(Debug, Default)]
pub struct ListPins {
    pins: VecDeque<Zeroizing<String>>,
}

impl ListPins {
    /// The PINs to hand out, in order.
    pub fn new<I, S>(pins: I) -> ListPins
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        ListPins {
            pins: pins.into_iter().map(|p| Zeroizing::new(p.into())).collect(),
        }
    }

    /// How many PINs are left.
    pub fn remaining(&self) -> usize {
        self.pins.len()
    }
}

impl PinSource for ListPins {
    fn read_pin(&mut self, _prompt: &str) -> Result<Zeroizing<String>, ClientError> {
        self.pins
            .pop_front()
            .ok_or_else(|| ClientError::PinInput("no PIN left in the list".to_owned()))
    }
}
