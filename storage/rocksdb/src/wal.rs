//! A reader of RocksDB's write-ahead log files, for diagnosis only: where a log is damaged,
//! and how many write batches (with how many records) follow the damage and would be lost by
//! a recovery that stops there. RocksDB replays the logs itself; this never changes a file.
//!
//! The format (RocksDB's `db/log_format.h`): 32 KiB blocks of physical records, each with a
//! 7-byte header (masked CRC-32C of type and payload, little-endian; payload length, 16-bit
//! little-endian; type), or 11 bytes for the recyclable types (a 32-bit log number follows,
//! covered by the checksum). A logical record is one FULL fragment or FIRST, MIDDLE…, LAST;
//! a block's last 6 bytes or fewer are padding. A write batch starts with its first sequence
//! number (64-bit) and its number of records (32-bit), both little-endian.

use std::path::{Path, PathBuf};

const BLOCK: usize = 32 * 1024;
const HEADER: usize = 7;
const RECYCLABLE_HEADER: usize = 11;
const MASK_DELTA: u32 = 0xa282_ead8;

/// What a look at one log file found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalFile {
    /// The file.
    pub path: PathBuf,
    /// Write batches read intact before any damage.
    pub batches: u64,
    /// The records (keys written) in those batches.
    pub records: u64,
    /// The first damage, if any.
    pub damage: Option<Damage>,
}

/// Damage in a log file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the first damaged record.
    pub offset: u64,
    /// Intact write batches found after the damage in the same file.
    pub batches_after: u64,
    /// The records (keys written) in those batches.
    pub records_after: u64,
}

/// All the log files of a database directory, oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WalReport {
    /// The files, by log number.
    pub files: Vec<WalFile>,
}

/// Where recovery at the first damage would stop, and what it would drop.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loss {
    /// The damaged file.
    pub path: PathBuf,
    /// Offset of the damage in it.
    pub offset: u64,
    /// Intact write batches after the damage (in that file and every later one).
    pub batches: u64,
    /// The records in them.
    pub records: u64,
}

impl WalReport {
    /// The first damage and everything after it (later files included), if any.
    pub fn loss(&self) -> Option<Loss> {
        let at = self.files.iter().position(|f| f.damage.is_some())?;
        let first = self.files.get(at)?;
        let damage = first.damage.as_ref()?;
        let mut loss = Loss {
            path: first.path.clone(),
            offset: damage.offset,
            batches: damage.batches_after,
            records: damage.records_after,
        };
        for later in self.files.iter().skip(at + 1) {
            loss.batches += later.batches;
            loss.records += later.records;
            if let Some(d) = &later.damage {
                loss.batches += d.batches_after;
                loss.records += d.records_after;
            }
        }
        Some(loss)
    }
}

/// Reads every `*.log` file of `dir` (RocksDB's write-ahead logs), oldest first.
pub fn inspect(dir: &Path) -> std::io::Result<WalReport> {
    let mut logs: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let number = name.strip_suffix(".log")?.parse::<u64>().ok()?;
            Some((number, e.path()))
        })
        .collect();
    logs.sort();
    let mut report = WalReport::default();
    for (_, path) in logs {
        let bytes = std::fs::read(&path)?;
        let mut file = read_file(&bytes);
        file.path = path;
        report.files.push(file);
    }
    Ok(report)
}

/// One logical record being assembled, or none.
struct Assembly {
    payload: Vec<u8>,
    open: bool,
}

/// The parsed physical records of one file.
fn read_file(bytes: &[u8]) -> WalFile {
    let mut out = WalFile::default();
    let mut records_before = 0u64;
    let mut damage: Option<Damage> = None;
    let mut assembly = Assembly {
        payload: Vec::new(),
        open: false,
    };
    let mut pos = 0usize;
    while pos < bytes.len() {
        let block_left = BLOCK - pos % BLOCK;
        if block_left < HEADER {
            pos += block_left;
            continue;
        }
        let Some(&[c0, c1, c2, c3, l0, l1, kind]) = bytes.get(pos..).and_then(|b| b.first_chunk())
        else {
            // A header cut short at the end of the file: a torn tail.
            note_damage(&mut damage, pos);
            break;
        };
        let (crc, len) = (
            u32::from_le_bytes([c0, c1, c2, c3]),
            usize::from(u16::from_le_bytes([l0, l1])),
        );
        let rest = bytes.get(pos..).unwrap_or_default();
        if crc == 0 && len == 0 && kind == 0 && rest.iter().all(|b| *b == 0) {
            // Nothing but zeros to the end: preallocated space after the last record.
            break;
        }
        let header = if (5..=8).contains(&kind) || kind == 11 {
            RECYCLABLE_HEADER
        } else {
            HEADER
        };
        let end = pos + header + len;
        let fits = header + len <= block_left;
        // A record of a known type whose length fits its block and whose checksum (over the
        // type byte, the log number if recyclable, and the payload) verifies; anything else
        // is damage, and the next record is looked for at the next byte (the checksum makes
        // a false find negligible), so that every intact record after the damage is counted.
        let known = matches!(kind & 0x7f, 1..=11);
        let checked = bytes.get(pos + 6..end).filter(|_| fits && known);
        if checked.is_none_or(|c| unmask(crc) != crc32c(c)) {
            note_damage(&mut damage, pos);
            assembly.open = false;
            pos += 1;
            continue;
        }
        let payload = bytes.get(pos + header..end).unwrap_or_default();
        let batch = match kind & 0x7f {
            1 | 5 => Some(payload.to_vec()),
            2 | 6 => {
                assembly.payload.clear();
                assembly.payload.extend_from_slice(payload);
                assembly.open = true;
                None
            }
            3 | 7 if assembly.open => {
                assembly.payload.extend_from_slice(payload);
                None
            }
            4 | 8 if assembly.open => {
                assembly.payload.extend_from_slice(payload);
                assembly.open = false;
                Some(std::mem::take(&mut assembly.payload))
            }
            // An orphan fragment, or a metadata record (compression type, timestamps, …).
            _ => None,
        };
        if let Some(b) = batch {
            let count = b
                .get(8..)
                .and_then(|c| c.first_chunk::<4>())
                .map_or(0, |c| u64::from(u32::from_le_bytes(*c)));
            match &mut damage {
                None => {
                    out.batches += 1;
                    records_before += count;
                }
                Some(d) => {
                    d.batches_after += 1;
                    d.records_after += count;
                }
            }
        }
        pos = end;
    }
    if assembly.open && damage.is_none() {
        // A logical record whose last fragment never came: a torn tail.
        note_damage(&mut damage, bytes.len());
    }
    out.damage = damage;
    out.records = records_before;
    out
}

fn note_damage(damage: &mut Option<Damage>, pos: usize) {
    if damage.is_none() {
        *damage = Some(Damage {
            offset: pos as u64,
            ..Damage::default()
        });
    }
}

fn unmask(masked: u32) -> u32 {
    let rot = masked.wrapping_sub(MASK_DELTA);
    rot.rotate_left(15)
}

/// CRC-32C (Castagnoli), as RocksDB checksums its log records.
fn crc32c(data: &[u8]) -> u32 {
    const POLY: u32 = 0x82f6_3b78;
    const TABLE: [u32; 256] = {
        let mut table = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ POLY } else { c >> 1 };
                k += 1;
            }
            #[allow(clippy::indexing_slicing)] // i < 256 = table.len()
            {
                table[i] = c;
            }
            i += 1;
        }
        table
    };
    let mut crc = !0u32;
    for b in data {
        let entry = TABLE
            .get(((crc ^ u32::from(*b)) & 0xff) as usize)
            .copied()
            .unwrap_or(0);
        crc = entry ^ (crc >> 8);
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_matches_the_standard_check_value() {
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        // RocksDB's mask is undone exactly.
        let crc = crc32c(b"zoftoken");
        let masked = crc.rotate_right(15).wrapping_add(MASK_DELTA);
        assert_eq!(unmask(masked), crc);
    }
}
