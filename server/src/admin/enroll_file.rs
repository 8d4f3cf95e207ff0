//! `zoftoken token enroll --from FILE --out FILE`: many users of one service enrolled from a
//! file, in batches of [`MAX_BATCH_ENROLLMENT`] (one commit each), written as CSV for a mail
//! merge. Either through the database (a stopped server's, or a shared PostgreSQL database
//! while servers run: the admin layer's [`Tokens::enroll_batch`]) or through the API of a
//! running server (`--api URL`: the batch call, as JSON lines).
//!
//! Input: CSV whose first column is the username (a first row whose first cell is
//! `username` is a header; other columns are ignored), or JSON lines (`.jsonl`, `.ndjson`,
//! or a first non-blank character `{`): one `{"username": …}` object or JSON string per line.
//! Output (a new file, mode 0600: deeplinks and manual codes are secrets until used):
//! `username,status,deeplink,manual_code,expires_ms,token_id,error`, one row per user in the
//! input's order, flushed after every batch.
//!
//! Memory stays bounded whatever the file's size: it is read a batch at a time
//! ([`UsernameFile`]), and the tokens enrolled through the database are dropped from the
//! command's engine once written ([`zoftoken_engine::Engine::unload`]).

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, IsTerminal, Write};
use std::path::Path;

use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde_json::{json, Value};
use zoftoken_admin::{BatchEnrolled, Tokens, MAX_BATCH_ENROLLMENT};
use zoftoken_proto::TokenId;

use super::api_client::{error_of, ApiClient};
use super::{Admin, CommandError, Output};

/// Characters escaped in a path segment (all but RFC 3986's unreserved ones).
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// What a batch said of one user, as the mail merge writes it.
enum Row {
    Enrolled {
        deeplink: String,
        manual_code: String,
        expires_ms: u64,
        token_id: String,
    },
    /// What the user already has (`paired`, `pending`).
    Skipped(String),
    /// Why the user was not enrolled.
    Failed(String),
}

impl From<BatchEnrolled> for Row {
    fn from(a: BatchEnrolled) -> Row {
        match a {
            BatchEnrolled::Enrolled(t) => Row::Enrolled {
                deeplink: t.deeplink,
                manual_code: t.manual_code,
                expires_ms: t.expires_ms,
                token_id: hex::encode(t.token_id.0),
            },
            BatchEnrolled::Skipped(e) => Row::Skipped(e.name().to_owned()),
            BatchEnrolled::Failed(e) => Row::Failed(e.to_string()),
            _ => Row::Failed("not enrolled".to_owned()),
        }
    }
}

impl Row {
    /// One result of the API's JSON lines answer.
    fn from_api(v: &Value) -> Option<Row> {
        let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_owned);
        Some(match v.get("status").and_then(Value::as_str)? {
            "enrolled" => Row::Enrolled {
                deeplink: text("deeplink")?,
                manual_code: text("manual_code")?,
                expires_ms: v.get("expires_ms").and_then(Value::as_u64)?,
                token_id: text("token_id")?,
            },
            "skipped" => Row::Skipped(text("existing").unwrap_or_default()),
            _ => Row::Failed(
                v.pointer("/error/message")
                    .and_then(Value::as_str)
                    .unwrap_or("failed")
                    .to_owned(),
            ),
        })
    }
}

/// The usernames of a CSV or JSON-lines file, read a batch at a time.
pub struct UsernameFile {
    path: String,
    size: u64,
    input: Input,
}

enum Input {
    Csv {
        reader: csv::Reader<BufReader<File>>,
        rows: usize,
    },
    Lines {
        reader: BufReader<File>,
        line: usize,
        read: u64,
    },
}

impl UsernameFile {
    /// Opens `path`: JSON lines by its extension (`.jsonl`, `.ndjson`) or a first non-blank
    /// character `{`, CSV otherwise.
    pub fn open(path: &Path) -> Result<UsernameFile, CommandError> {
        let name = path.display().to_string();
        let bad = |e: std::io::Error| CommandError::Invalid(format!("{name}: {e}"));
        let file = File::open(path).map_err(bad)?;
        let size = file.metadata().map_err(bad)?.len();
        let mut reader = BufReader::with_capacity(1 << 16, file);
        let mut json_lines = path
            .extension()
            .is_some_and(|e| e == "jsonl" || e == "ndjson");
        while !json_lines {
            let buf = reader.fill_buf().map_err(bad)?;
            match buf.iter().find(|b| !b.is_ascii_whitespace()) {
                Some(first) => {
                    json_lines = *first == b'{';
                    break;
                }
                None if buf.is_empty() => break,
                // A buffer of nothing but blanks: skipped.
                None => {
                    let n = buf.len();
                    reader.consume(n);
                }
            }
        }
        let input = if json_lines {
            Input::Lines {
                reader,
                line: 0,
                read: 0,
            }
        } else {
            Input::Csv {
                reader: csv::ReaderBuilder::new()
                    .has_headers(false)
                    .flexible(true)
                    .from_reader(reader),
                rows: 0,
            }
        };
        Ok(UsernameFile {
            path: name,
            size,
            input,
        })
    }

    /// Up to `max` more usernames, in the file's order (none at its end).
    pub fn next_batch(&mut self, max: usize) -> Result<Vec<String>, CommandError> {
        let path = &self.path;
        let bad = |what: String| CommandError::Invalid(format!("{path}: {what}"));
        let mut out = Vec::new();
        match &mut self.input {
            Input::Csv { reader, rows } => {
                let mut record = csv::StringRecord::new();
                while out.len() < max {
                    let more = reader
                        .read_record(&mut record)
                        .map_err(|e| bad(format!("row {}: {e}", *rows + 1)))?;
                    if !more {
                        break;
                    }
                    *rows += 1;
                    let Some(first) = record.get(0) else { continue };
                    if *rows == 1 && first.trim().eq_ignore_ascii_case("username") {
                        continue;
                    }
                    if record.iter().all(|c| c.trim().is_empty()) {
                        continue;
                    }
                    out.push(first.to_owned());
                }
            }
            Input::Lines { reader, line, read } => {
                let mut text = String::new();
                while out.len() < max {
                    text.clear();
                    let n = reader
                        .read_line(&mut text)
                        .map_err(|e| bad(format!("line {}: {e}", *line + 1)))?;
                    if n == 0 {
                        break;
                    }
                    *line += 1;
                    *read += n as u64;
                    if text.trim().is_empty() {
                        continue;
                    }
                    let v: Value = serde_json::from_str(&text)
                        .map_err(|e| bad(format!("line {line}: {e}")))?;
                    let name = v
                        .as_str()
                        .or_else(|| v.get("username").and_then(Value::as_str))
                        .ok_or_else(|| {
                            bad(format!(
                                "line {line}: neither a string nor an object with `username`"
                            ))
                        })?;
                    out.push(name.to_owned());
                }
            }
        }
        Ok(out)
    }

    /// How far through the file the batches read so far went, from 0 to 1.
    pub fn fraction(&self) -> f64 {
        let at = match &self.input {
            Input::Csv { reader, .. } => reader.position().byte(),
            Input::Lines { read, .. } => *read,
        };
        if self.size == 0 {
            1.0
        } else {
            (at as f64 / self.size as f64).min(1.0)
        }
    }
}

/// The mail-merge CSV being written.
struct MailMerge {
    csv: csv::Writer<BufWriter<File>>,
    path: String,
    /// Users written: enrolled, skipped, failed.
    counts: [usize; 3],
}

impl MailMerge {
    /// Creates `path` (never an existing file: an earlier mail merge may not have been sent
    /// yet), readable by its owner only, with the header row.
    fn create(path: &Path) -> Result<MailMerge, CommandError> {
        let name = path.display().to_string();
        let file = private_file(path).map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => CommandError::Invalid(format!(
                "{name} exists: a mail merge is never overwritten, give another --out"
            )),
            _ => CommandError::Invalid(format!("{name}: {e}")),
        })?;
        let mut m = MailMerge {
            csv: csv::Writer::from_writer(BufWriter::new(file)),
            path: name,
            counts: [0; 3],
        };
        m.record([
            "username",
            "status",
            "deeplink",
            "manual_code",
            "expires_ms",
            "token_id",
            "error",
        ])?;
        Ok(m)
    }

    fn record(&mut self, cells: [&str; 7]) -> Result<(), CommandError> {
        self.csv
            .write_record(cells)
            .map_err(|e| CommandError::Invalid(format!("{}: {e}", self.path)))
    }

    /// Writes one user's row.
    fn write(&mut self, username: &str, row: &Row) -> Result<(), CommandError> {
        match row {
            Row::Enrolled {
                deeplink,
                manual_code,
                expires_ms,
                token_id,
            } => {
                self.counts[0] += 1;
                let expires = expires_ms.to_string();
                self.record([
                    username,
                    "enrolled",
                    deeplink,
                    manual_code,
                    &expires,
                    token_id,
                    "",
                ])
            }
            Row::Skipped(existing) => {
                self.counts[1] += 1;
                let status = format!("skipped ({existing})");
                self.record([username, &status, "", "", "", "", ""])
            }
            Row::Failed(error) => {
                self.counts[2] += 1;
                self.record([username, "failed", "", "", "", "", error])
            }
        }
    }

    /// Users written so far.
    fn done(&self) -> usize {
        self.counts.iter().sum()
    }

    /// Puts the rows written so far into the file.
    fn flush(&mut self) -> Result<(), CommandError> {
        self.csv
            .flush()
            .map_err(|e| CommandError::Invalid(format!("{}: {e}", self.path)))
    }
}

/// Enrolls one batch of users: an answer per username, in order.
type EnrollBatch<'a> = dyn FnMut(&[String]) -> Result<Vec<Row>, CommandError> + 'a;

/// Enrolls the users of `job.from` a batch at a time with `enroll` (an answer per username,
/// in order) and writes the mail merge to `job.out`; `progress` hears the users done and the part of
/// the file read after each batch. A failure after the first batch keeps the rows written and
/// says how far it got ([`CommandError::Stopped`]).
fn enroll_file(
    job: EnrollFile<'_>,
    progress: &mut dyn FnMut(usize, f64),
    enroll: &mut EnrollBatch<'_>,
) -> Result<Output, CommandError> {
    let EnrollFile {
        service, from, out, ..
    } = job;
    let mut users = UsernameFile::open(from)?;
    let mut mail = MailMerge::create(out)?;
    let mut batch = || -> Result<bool, CommandError> {
        let names = users.next_batch(MAX_BATCH_ENROLLMENT)?;
        if names.is_empty() {
            return Ok(false);
        }
        let rows = enroll(&names)?;
        if rows.len() != names.len() {
            return Err(CommandError::Invalid(format!(
                "{} answers for {} users",
                rows.len(),
                names.len()
            )));
        }
        for (name, row) in names.iter().zip(&rows) {
            mail.write(name, row)?;
        }
        mail.flush()?;
        progress(mail.done(), users.fraction());
        Ok(true)
    };
    loop {
        match batch() {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if mail.done() == 0 => {
                // Nothing to keep: no file of a header alone is left behind.
                drop(mail);
                let _ = std::fs::remove_file(out);
                return Err(e);
            }
            Err(e) => {
                return Err(CommandError::Stopped {
                    done: mail.done(),
                    out: mail.path.clone(),
                    source: Box::new(e),
                })
            }
        }
    }
    progress(mail.done(), 1.0);
    let [enrolled, skipped, failed] = mail.counts;
    let users = mail.done();
    Ok(Output {
        human: format!(
            "{users} users of `{service}`: {enrolled} enrolled, {skipped} skipped, {failed} \
             failed; written to {} (secret until used: hand each row to its user only)\n",
            mail.path
        ),
        json: json!({
            "service": service,
            "users": users,
            "enrolled": enrolled,
            "skipped": skipped,
            "failed": failed,
            "out": mail.path,
        }),
    })
}

/// What `token enroll --from FILE --out FILE` is asked to do.
#[derive(Clone, Copy, Debug)]
pub struct EnrollFile<'a> {
    /// The service.
    pub service: &'a str,
    /// The usernames' file.
    pub from: &'a Path,
    /// The mail merge to write (a new file).
    pub out: &'a Path,
    /// Skip users who have a paired token or a usable enrollment.
    pub if_absent: bool,
}

/// A running server's API, as `token enroll --api` reaches it.
#[derive(Clone, Copy)]
pub struct ApiTarget<'a> {
    /// Its URL (`http://host:port`, `https://…`).
    pub url: &'a str,
    /// An authkey with the admin right for the service.
    pub key: &'a str,
    /// Certificates (PEM) to trust beside the system's.
    pub ca_file: Option<&'a str>,
}

impl Admin {
    /// `token enroll --from FILE --out FILE`, through the database: enrolls every user of
    /// the file and writes the mail-merge CSV.
    pub fn token_enroll_file(
        &self,
        now_ms: u64,
        job: EnrollFile<'_>,
        progress: &mut dyn FnMut(usize, f64),
    ) -> Result<Output, CommandError> {
        let engine = self.engine()?;
        let tokens = Tokens::new(&self.store, &engine);
        let service = job.service;
        enroll_file(job, progress, &mut |names| {
            let answers = tokens.enroll_batch(now_ms, service, names, job.if_absent)?;
            // Written: the command's engine need not hold them any longer.
            for name in names {
                engine.unload(&TokenId::derive(service, name));
            }
            Ok(answers.into_iter().map(Row::from).collect())
        })
    }
}

/// `token enroll --from FILE --out FILE --api URL`: as [`Admin::token_enroll_file`], through
/// the batch call of a running server's API.
pub fn enroll_file_through_api(
    api: ApiTarget<'_>,
    job: EnrollFile<'_>,
    progress: &mut dyn FnMut(usize, f64),
) -> Result<Output, CommandError> {
    let client = ApiClient::new(api.url, api.key, api.ca_file)?;
    let path = format!(
        "/v1/services/{}/tokens{}",
        utf8_percent_encode(job.service, SEGMENT),
        if job.if_absent { "?if_absent=true" } else { "" }
    );
    enroll_file(job, progress, &mut |names| {
        let mut body = Vec::with_capacity(names.len() * 32);
        for name in names {
            serde_json::to_writer(&mut body, name)
                .map_err(|e| CommandError::Invalid(e.to_string()))?;
            body.push(b'\n');
        }
        let answer = client.post(&path, "application/x-ndjson", body.into())?;
        if answer.status != 200 {
            let (code, message) = error_of(&answer.body);
            return Err(CommandError::Api {
                status: answer.status,
                code,
                message,
            });
        }
        let unreadable = |why: &str| CommandError::Unreachable {
            url: format!("{}{path}", api.url),
            reason: format!("an unreadable answer: {why}"),
        };
        let mut rows = Vec::with_capacity(names.len());
        for (line, name) in answer
            .body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .zip(names)
        {
            let v: Value = serde_json::from_slice(line).map_err(|_| unreadable("not JSON"))?;
            if v.get("username").and_then(Value::as_str) != Some(name.as_str()) {
                return Err(unreadable("answers out of order"));
            }
            rows.push(Row::from_api(&v).ok_or_else(|| unreadable("a result without its fields"))?);
        }
        Ok(rows)
    })
}

/// Creates `path` (not an existing file) readable by its owner only.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

/// A progress bar on standard error when it is a terminal: the part of the file done and the
/// users enrolled so far.
pub fn terminal_progress() -> impl FnMut(usize, f64) {
    let on_terminal = std::io::stderr().is_terminal();
    let mut ended = false;
    move |done, fraction| {
        if !on_terminal || ended {
            return;
        }
        const WIDTH: usize = 30;
        let filled = ((fraction * WIDTH as f64) as usize).min(WIDTH);
        let mut e = std::io::stderr();
        let _ = write!(
            e,
            "\r[{}{}] {:>3} %  {done} users",
            "#".repeat(filled),
            ".".repeat(WIDTH - filled),
            (fraction * 100.0) as u32
        );
        if fraction >= 1.0 {
            ended = true;
            let _ = writeln!(e);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn all(path: &Path, batch: usize) -> Result<Vec<String>, CommandError> {
        let mut f = UsernameFile::open(path)?;
        let mut out = Vec::new();
        loop {
            let b = f.next_batch(batch)?;
            if b.is_empty() {
                assert_eq!(f.fraction(), 1.0);
                return Ok(out);
            }
            assert!(b.len() <= batch);
            out.extend(b);
        }
    }

    #[test]
    fn usernames_come_from_the_first_csv_column_or_json_lines_a_batch_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let csv = dir.path().join("users.csv");
        std::fs::write(
            &csv,
            "username,email\nana,a@x\n\"smith, john\",j@x\n\n  bob  ,b@x\n",
        )
        .unwrap();
        for batch in [1, 2, 10] {
            assert_eq!(all(&csv, batch).unwrap(), ["ana", "smith, john", "  bob  "]);
        }
        // Without a header, the first row is a user.
        std::fs::write(&csv, "ana\nbob").unwrap();
        assert_eq!(all(&csv, 10).unwrap(), ["ana", "bob"]);
        let jl = dir.path().join("users.jsonl");
        std::fs::write(&jl, "{\"username\":\"ana\"}\n\"bob\"\n\n").unwrap();
        assert_eq!(all(&jl, 1).unwrap(), ["ana", "bob"]);
        // JSON lines recognised by the first character, whatever the name.
        let txt = dir.path().join("users.txt");
        std::fs::write(&txt, "\n  {\"username\":\"ana\"}\n\"bob\"\n").unwrap();
        assert_eq!(all(&txt, 10).unwrap(), ["ana", "bob"]);
        std::fs::write(&jl, "\"ana\"\n{\"name\":\"bob\"}\n").unwrap();
        let e = all(&jl, 10).unwrap_err().to_string();
        assert!(e.contains("line 2"), "{e}");
        let empty = dir.path().join("empty.csv");
        std::fs::write(&empty, "").unwrap();
        assert!(all(&empty, 10).unwrap().is_empty());
    }
}
