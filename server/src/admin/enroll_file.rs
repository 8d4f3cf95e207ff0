//! `zoftoken token enroll --from FILE`: many users of one service enrolled from a file, in
//! batches of [`MAX_BATCH_ENROLLMENT`] (one commit each, through the admin layer's
//! [`Tokens::enroll_batch`]), written as CSV for a mail merge.
//!
//! Input: CSV whose first column is the username (a first row whose first cell is
//! `username` is a header; other columns are ignored), or JSON lines (`.jsonl`, `.ndjson`,
//! or a first non-blank character `{`): one `{"username": …}` object or JSON string per line.
//! Output (mode 0600: deeplinks and manual codes are secrets until used):
//! `username,status,deeplink,manual_code,expires_ms,token_id,error`, one row per user in the
//! input's order.

use std::io::{BufReader, IsTerminal, Write};
use std::path::Path;

use serde_json::json;
use zoftoken_admin::{BatchEnrolled, Tokens, MAX_BATCH_ENROLLMENT};

use super::{Admin, CommandError, Output};

/// Reads the usernames of a CSV or JSON-lines file, in order.
pub fn read_usernames(path: &Path) -> Result<Vec<String>, CommandError> {
    let bad = |what: String| CommandError::Invalid(format!("{}: {what}", path.display()));
    let text = std::fs::read_to_string(path).map_err(|e| bad(e.to_string()))?;
    let json_lines = path
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "ndjson")
        || text.trim_start().starts_with('{');
    let mut out = Vec::new();
    if json_lines {
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: serde_json::Value =
                serde_json::from_str(line).map_err(|e| bad(format!("line {}: {e}", i + 1)))?;
            let name = v
                .as_str()
                .or_else(|| v.get("username").and_then(|u| u.as_str()))
                .ok_or_else(|| {
                    bad(format!(
                        "line {}: neither a string nor an object with `username`",
                        i + 1
                    ))
                })?;
            out.push(name.to_owned());
        }
        return Ok(out);
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(BufReader::new(text.as_bytes()));
    for (i, record) in reader.records().enumerate() {
        let record = record.map_err(|e| bad(format!("row {}: {e}", i + 1)))?;
        let Some(first) = record.get(0) else { continue };
        if i == 0 && first.trim().eq_ignore_ascii_case("username") {
            continue;
        }
        if record.iter().all(|c| c.trim().is_empty()) {
            continue;
        }
        out.push(first.to_owned());
    }
    Ok(out)
}

impl Admin {
    /// `token enroll --from FILE --out FILE`: enrolls every user of the file (with
    /// `if_absent`, skipping those who have a paired token or a usable enrollment) and
    /// writes the mail-merge CSV; `progress` is told the users done after each batch.
    pub fn token_enroll_file(
        &self,
        now_ms: u64,
        service: &str,
        from: &Path,
        out: &Path,
        if_absent: bool,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Output, CommandError> {
        let usernames = read_usernames(from)?;
        let engine = self.engine()?;
        let tokens = Tokens::new(&self.store, &engine);
        let io = |e: std::io::Error| CommandError::Invalid(format!("{}: {e}", out.display()));
        let file = private_file(out).map_err(io)?;
        let mut csv = csv::Writer::from_writer(std::io::BufWriter::new(file));
        let header = [
            "username",
            "status",
            "deeplink",
            "manual_code",
            "expires_ms",
            "token_id",
            "error",
        ];
        let write_err = |e: csv::Error| CommandError::Invalid(format!("{}: {e}", out.display()));
        csv.write_record(header).map_err(write_err)?;
        let (mut enrolled, mut skipped, mut failed) = (0usize, 0usize, 0usize);
        let mut done = 0;
        for chunk in usernames.chunks(MAX_BATCH_ENROLLMENT) {
            let answers = tokens.enroll_batch(now_ms, service, chunk, if_absent)?;
            for (username, answer) in chunk.iter().zip(answers) {
                let row = match answer {
                    BatchEnrolled::Enrolled(t) => {
                        enrolled += 1;
                        [
                            username.clone(),
                            "enrolled".into(),
                            t.deeplink,
                            t.manual_code,
                            t.expires_ms.to_string(),
                            hex::encode(t.token_id.0),
                            String::new(),
                        ]
                    }
                    BatchEnrolled::Skipped(e) => {
                        skipped += 1;
                        let mut r: [String; 7] = Default::default();
                        r[0] = username.clone();
                        r[1] = format!("skipped ({})", e.name());
                        r
                    }
                    BatchEnrolled::Failed(e) => {
                        failed += 1;
                        let mut r: [String; 7] = Default::default();
                        r[0] = username.clone();
                        r[1] = "failed".into();
                        r[6] = e.to_string();
                        r
                    }
                    _ => {
                        failed += 1;
                        let mut r: [String; 7] = Default::default();
                        r[0] = username.clone();
                        r[1] = "failed".into();
                        r
                    }
                };
                csv.write_record(&row).map_err(write_err)?;
            }
            done += chunk.len();
            progress(done, usernames.len());
        }
        csv.flush().map_err(io)?;
        Ok(Output {
            human: format!(
                "{} users of `{service}`: {enrolled} enrolled, {skipped} skipped, {failed} failed; \
                 written to {} (secret until used: hand each row to its user only)\n",
                usernames.len(),
                out.display()
            ),
            json: json!({
                "service": service,
                "users": usernames.len(),
                "enrolled": enrolled,
                "skipped": skipped,
                "failed": failed,
                "out": out.display().to_string(),
            }),
        })
    }
}

/// Creates (or truncates) `path` readable by its owner only.
fn private_file(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    Ok(f)
}

/// Progress on standard error when it is a terminal: users done of all, on one line.
pub fn terminal_progress() -> impl FnMut(usize, usize) {
    let on_terminal = std::io::stderr().is_terminal();
    move |done, all| {
        if on_terminal {
            let mut e = std::io::stderr();
            let _ = write!(e, "\rzoftoken: {done} of {all} users");
            if done == all {
                let _ = writeln!(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn usernames_come_from_the_first_csv_column_or_json_lines() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("users.csv");
        std::fs::write(
            &csv,
            "username,email\nana,a@x\n\"smith, john\",j@x\n\n  bob  ,b@x\n",
        )
        .unwrap();
        assert_eq!(
            read_usernames(&csv).unwrap(),
            ["ana", "smith, john", "  bob  "]
        );
        let jl = dir.path().join("users.jsonl");
        std::fs::write(&jl, "{\"username\":\"ana\"}\n\"bob\"\n\n").unwrap();
        assert_eq!(read_usernames(&jl).unwrap(), ["ana", "bob"]);
        std::fs::write(&jl, "{\"name\":\"ana\"}\n").unwrap();
        assert!(read_usernames(&jl).is_err());
    }
}
