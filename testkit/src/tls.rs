//! Test certificates, made with `openssl` (`scripts/setup.sh` installs it): a certificate
//! authority and one server certificate it signed, valid two days, in a directory of the
//! test's.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The files [`make_certs`] wrote.
pub struct TestCerts {
    /// The authority's certificate (PEM): the trust anchor a client is given.
    pub ca: PathBuf,
    /// The server's certificate (PEM).
    pub cert: PathBuf,
    /// The server's private key (PEM, unencrypted).
    pub key: PathBuf,
}

/// Writes `ca.pem`, `srv.pem` and `srv.key` into `dir`: a P-256 authority and a server
/// certificate for `names` (subject alternative names: `DNS:localhost`, `IP:127.0.0.1`).
pub fn make_certs(dir: &Path, names: &[&str]) -> TestCerts {
    let script = format!(
        r#"
set -e
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout ca.key -out ca.pem -days 2 -subj /CN=zoftoken-test-ca 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
  -keyout srv.key -out srv.csr -subj /CN=zoftoken-test-server 2>/dev/null
printf 'subjectAltName={}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n' > ext
openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out srv.pem \
  -days 2 -extfile ext 2>/dev/null
"#,
        names.join(",")
    );
    std::fs::create_dir_all(dir).expect("certificate directory");
    let ok = Command::new("sh")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .status()
        .expect("sh")
        .success();
    assert!(
        ok,
        "openssl made the certificates (install it: ./scripts/setup.sh)"
    );
    TestCerts {
        ca: dir.join("ca.pem"),
        cert: dir.join("srv.pem"),
        key: dir.join("srv.key"),
    }
}
