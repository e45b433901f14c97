//! Kafka over TLS for the tests: a certificate authority and a broker certificate made here,
//! and a tansu of the test's own behind stunnel, which terminates TLS in front of it.
//!
//! tansu 0.6.0 serves every connection in clear (clap refuses its `--cert` with `--key`, one
//! argument group, and its broker builds a TLS acceptor it never uses), and noida-db has no TLS
//! at all: stunnel (Debian's
//! `stunnel4`, installed by scripts/lib.sh `ensure_stunnel`) is the TLS endpoint. tansu listens
//! in clear on a loopback port that only stunnel connects to, and advertises stunnel's address,
//! so that the metadata every client gets sends it back through TLS: a client given the TLS
//! address never learns the plaintext one.
//!
//! With SCRAM, tansu runs with `--authentication` on its SQLite storage (its in-memory storage
//! keeps no SCRAM credentials): the user is created first through a broker without
//! authentication on the same database, which then restarts with it.

use openssl::asn1::{Asn1Integer, Asn1Time};
use openssl::bn::{BigNum, MsbOption};
use openssl::ec::{EcGroup, EcKey};
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{PKey, Private};
use openssl::x509::extension::{
    AuthorityKeyIdentifier, BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAlternativeName,
    SubjectKeyIdentifier,
};
use openssl::x509::{X509, X509Builder, X509Name, X509NameBuilder, X509NameRef, X509Ref};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// A certificate authority made for one test, and the broker certificate it signed.
pub struct Pki {
    /// Where the PEM files are.
    pub dir: PathBuf,
    /// The CA's certificate: what clients are given as `ssl.ca.location`.
    pub ca: PathBuf,
    /// Another CA's certificate, which did not sign the broker's: a client given it must refuse
    /// the broker.
    pub other_ca: PathBuf,
    /// The broker's certificate (for `127.0.0.1` and `localhost`) and its key.
    pub broker_cert: PathBuf,
    pub broker_key: PathBuf,
}

impl Pki {
    /// Makes both CAs and the broker's certificate in a new directory.
    pub fn make() -> Pki {
        let dir = std::env::temp_dir().join(super::broker::unique("keyhole-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let (ca_cert, ca_key) = authority("keyhole test CA");
        let (other_cert, _) = authority("keyhole test CA");
        let (cert, key) = broker_certificate(&ca_cert, &ca_key);
        let pki = Pki {
            ca: dir.join("ca.pem"),
            other_ca: dir.join("other-ca.pem"),
            broker_cert: dir.join("broker.pem"),
            broker_key: dir.join("broker.key"),
            dir,
        };
        std::fs::write(&pki.ca, ca_cert.to_pem().unwrap()).unwrap();
        std::fs::write(&pki.other_ca, other_cert.to_pem().unwrap()).unwrap();
        std::fs::write(&pki.broker_cert, cert.to_pem().unwrap()).unwrap();
        std::fs::write(&pki.broker_key, key.private_key_to_pem_pkcs8().unwrap()).unwrap();
        pki
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

fn key() -> PKey<Private> {
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
    PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap()
}

fn name(common_name: &str) -> X509Name {
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", common_name).unwrap();
    name.build()
}

fn serial() -> Asn1Integer {
    let mut serial = BigNum::new().unwrap();
    serial.rand(127, MsbOption::MAYBE_ZERO, false).unwrap();
    serial.to_asn1_integer().unwrap()
}

/// A certificate valid from an hour ago (clocks differ a little) for a day.
fn builder(subject: &X509NameRef, issuer: &X509NameRef, key: &PKey<Private>) -> X509Builder {
    let mut builder = X509Builder::new().unwrap();
    builder.set_version(2).unwrap();
    builder.set_serial_number(&serial()).unwrap();
    builder.set_subject_name(subject).unwrap();
    builder.set_issuer_name(issuer).unwrap();
    builder.set_pubkey(key).unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let now = i64::try_from(now).unwrap();
    builder.set_not_before(&Asn1Time::from_unix(now - 3600).unwrap()).unwrap();
    builder.set_not_after(&Asn1Time::from_unix(now + 86_400).unwrap()).unwrap();
    builder
}

/// A self-signed CA: its certificate and key.
fn authority(common_name: &str) -> (X509, PKey<Private>) {
    let key = key();
    let subject = name(common_name);
    let mut ca = builder(&subject, &subject, &key);
    ca.append_extension(BasicConstraints::new().critical().ca().build().unwrap()).unwrap();
    ca.append_extension(KeyUsage::new().critical().key_cert_sign().crl_sign().build().unwrap()).unwrap();
    let identifier = SubjectKeyIdentifier::new().build(&ca.x509v3_context(None, None)).unwrap();
    ca.append_extension(identifier).unwrap();
    ca.sign(&key, MessageDigest::sha256()).unwrap();
    (ca.build(), key)
}

/// The broker's certificate, signed by the CA, for the names clients reach it by: librdkafka
/// checks the broker's address against it (`ssl.endpoint.identification.algorithm=https`, its
/// default).
fn broker_certificate(ca: &X509Ref, ca_key: &PKey<Private>) -> (X509, PKey<Private>) {
    let key = key();
    let mut cert = builder(&name("keyhole test broker"), ca.subject_name(), &key);
    cert.append_extension(BasicConstraints::new().build().unwrap()).unwrap();
    cert.append_extension(KeyUsage::new().critical().digital_signature().build().unwrap()).unwrap();
    cert.append_extension(ExtendedKeyUsage::new().server_auth().build().unwrap()).unwrap();
    let names = SubjectAlternativeName::new()
        .ip("127.0.0.1")
        .dns("localhost")
        .build(&cert.x509v3_context(Some(ca), None))
        .unwrap();
    cert.append_extension(names).unwrap();
    let authority =
        AuthorityKeyIdentifier::new().keyid(true).build(&cert.x509v3_context(Some(ca), None)).unwrap();
    cert.append_extension(authority).unwrap();
    cert.sign(ca_key, MessageDigest::sha256()).unwrap();
    (cert.build(), key)
}

/// The stunnel binary (`ensure_stunnel` in scripts/lib.sh installs Debian's `stunnel4`).
fn stunnel() -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .flat_map(|dir| [dir.join("stunnel4"), dir.join("stunnel")])
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "stunnel is not installed: the TLS tests put it in front of tansu. scripts/test.sh \
                 installs it (scripts/lib.sh: ensure_stunnel; Debian's stunnel4)"
            )
        })
}

/// Where tansu keeps its data.
enum Storage {
    /// In memory (the suite's broker's storage).
    Memory,
    /// In a SQLite database in the broker's directory: the storage that keeps SCRAM
    /// credentials, with or without requiring authentication.
    Sqlite { authentication: bool },
}

/// A SCRAM user the broker knows (SCRAM-SHA-512).
pub struct ScramUser<'a> {
    pub name: &'a str,
    pub password: &'a str,
}

/// tansu behind stunnel: TLS on `bootstrap`, tansu itself in clear where only stunnel connects.
pub struct TlsBroker {
    /// `127.0.0.1:PORT` of stunnel's TLS listener: the only address clients are given, and the
    /// one tansu advertises.
    pub bootstrap: String,
    /// tansu's own listener, in clear: stunnel's upstream.
    pub plaintext: String,
    /// The broker's log (tansu's and stunnel's), for failure messages.
    pub dir: PathBuf,
    tansu: Option<Child>,
    stunnel: Option<Child>,
}

impl TlsBroker {
    /// Starts tansu (in-memory storage) and stunnel with the PKI's broker certificate; waits
    /// until a TLS client gets metadata through it.
    pub async fn start(pki: &Pki) -> TlsBroker {
        TlsBroker::start_with(pki, None).await
    }

    /// [`TlsBroker::start`]; with `scram`, tansu requires SASL (SCRAM) from every client and
    /// knows that user.
    pub async fn start_with(pki: &Pki, scram: Option<&ScramUser<'_>>) -> TlsBroker {
        let dir = std::env::temp_dir().join(super::broker::unique("keyhole-tls-broker"));
        std::fs::create_dir_all(&dir).unwrap();
        let plaintext_port = super::cluster::free_port();
        let tls_port =
            std::iter::repeat_with(super::cluster::free_port).find(|p| *p != plaintext_port).unwrap();
        let mut broker = TlsBroker {
            bootstrap: format!("127.0.0.1:{tls_port}"),
            plaintext: format!("127.0.0.1:{plaintext_port}"),
            dir,
            tansu: None,
            stunnel: None,
        };
        if let Some(user) = scram {
            // The user is written to the SQLite database by a broker that does not yet ask for
            // authentication (tansu's own client speaks no SASL), which then restarts with it.
            broker.start_tansu(Storage::Sqlite { authentication: false }).await;
            let created = super::command_dying_with_the_test(super::prerequisite("KEYHOLE_TEST_TANSU"))
                .args(["user", "create", "--broker", &format!("tcp://{}", broker.plaintext)])
                .args(["--mechanism", "scram512", user.name, user.password])
                .current_dir(&broker.dir)
                .output()
                .unwrap();
            assert!(
                created.status.success(),
                "tansu user create: {}",
                String::from_utf8_lossy(&created.stderr)
            );
            broker.stop_tansu();
            broker.start_tansu(Storage::Sqlite { authentication: true }).await;
        } else {
            broker.start_tansu(Storage::Memory).await;
        }
        broker.start_stunnel(pki).await;
        broker
    }

    /// tansu on the plaintext port, advertising the TLS one.
    async fn start_tansu(&mut self, storage: Storage) {
        let mut command = super::command_dying_with_the_test(super::prerequisite("KEYHOLE_TEST_TANSU"));
        command
            .args(["broker", "--cluster-id", "keyhole-tls"])
            .args(["--listener-url", &format!("tcp://{}", self.plaintext)])
            .args(["--advertised-listener-url", &format!("tcp://{}", self.bootstrap)])
            .current_dir(&self.dir);
        match storage {
            Storage::Memory => {
                command.args(["--storage-engine", "memory://tansu/"]);
            }
            Storage::Sqlite { authentication } => {
                // Relative to the working directory: tansu joins the URL's host and path to it.
                command.args(["--storage-engine", "sqlite://tansu.db"]);
                if authentication {
                    command.arg("--authentication");
                }
            }
        }
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("tansu.log")).unwrap();
        command.stdout(Stdio::null()).stderr(log);
        self.tansu = Some(command.spawn().unwrap());
        let plaintext = self.plaintext.clone();
        self.wait_for(&plaintext, "tansu").await;
    }

    fn stop_tansu(&mut self) {
        if let Some(mut tansu) = self.tansu.take() {
            tansu.kill().ok();
            tansu.wait().ok();
        }
    }

    async fn start_stunnel(&mut self, pki: &Pki) {
        let config = self.dir.join("stunnel.conf");
        std::fs::write(
            &config,
            format!(
                "foreground = yes\npid =\ndebug = notice\n\n[kafka]\naccept = {accept}\nconnect = \
                 {connect}\ncert = {cert}\nkey = {key}\n",
                accept = self.bootstrap,
                connect = self.plaintext,
                cert = pki.broker_cert.display(),
                key = pki.broker_key.display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.dir.join("stunnel.log")).unwrap();
        let child = super::command_dying_with_the_test(stunnel())
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.stunnel = Some(child);
        let bootstrap = self.bootstrap.clone();
        self.wait_for(&bootstrap, "stunnel").await;
    }

    /// Waits until `address` accepts connections; fails with the logs if `what` exits or takes
    /// longer than 20 s.
    async fn wait_for(&mut self, address: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while tokio::net::TcpStream::connect(address).await.is_err() {
            let exited = [&mut self.tansu, &mut self.stunnel]
                .into_iter()
                .flatten()
                .any(|child| child.try_wait().ok().flatten().is_some());
            assert!(
                !exited && Instant::now() < deadline,
                "{what} did not start on {address}:\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// tansu's and stunnel's logs.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("tansu.log:\n{}\nstunnel.log:\n{}", read("tansu.log"), read("stunnel.log"))
    }

    /// The test's own Kafka client configuration: the TLS address and `properties`.
    pub fn client(&self, properties: &[(&str, &str)]) -> rdkafka::ClientConfig {
        let mut config = rdkafka::ClientConfig::new();
        config.set("bootstrap.servers", &self.bootstrap);
        for (name, value) in properties {
            config.set(*name, *value);
        }
        config
    }
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for child in [self.stunnel.take(), self.tansu.take()].into_iter().flatten() {
            let mut child = child;
            child.kill().ok();
            child.wait().ok();
        }
        std::fs::remove_dir_all(&self.dir).ok();
    }
}
