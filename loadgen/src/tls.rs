//! The client's TLS layer: rustls configuration from the `--tls*` flags and sans-IO pumping between a socket and rustls.
//!
//! rustls's `ClientConnection` holds no socket: the engine moves ciphertext between it and
//! the non-blocking socket with [`push`] and [`pull`] and moves plaintext with
//! `writer()`/`reader()`, so a handshake never blocks the worker's event loop.

use std::io::{self, Read, Write};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore, SignatureScheme};

use crate::cli::TlsOpts;

/// Sessions a worker remembers for resumption; more than a worker's connections rarely helps.
const RESUME_CACHE: usize = 4096;

/// What every connection of one worker shares: the configuration (and with it the
/// resumption cache, so sessions resume per thread) and the server name.
#[derive(Clone)]
pub struct Client {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl Client {
    /// One worker's client. Each worker builds its own so `--tls-resume` reuses sessions
    /// within a thread only, as a real sending MTA's process would.
    pub fn new(o: &TlsOpts) -> Result<Client, String> {
        Client::with_resumption(o, o.resume)
    }

    /// A client that resumes sessions (keeping its own cache) or never does, whatever
    /// `--tls-resume` says: the tls class's two variants (`--tls-resume-share`).
    pub fn with_resumption(o: &TlsOpts, resume: bool) -> Result<Client, String> {
        let builder = ClientConfig::builder();
        let mut config = match &o.ca {
            Some(path) => {
                let mut roots = RootCertStore::empty();
                let certs = CertificateDer::pem_file_iter(path)
                    .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                for cert in certs {
                    let cert = cert.map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                    roots
                        .add(cert)
                        .map_err(|e| format!("--tls-ca {}: {e}", path.display()))?;
                }
                if roots.is_empty() {
                    return Err(format!("--tls-ca {}: no certificate in it", path.display()));
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerify(default_provider())))
                .with_no_client_auth(),
        };
        config.resumption = if resume {
            Resumption::in_memory_sessions(RESUME_CACHE)
        } else {
            Resumption::disabled()
        };
        let name = ServerName::try_from(o.server_name.clone())
            .map_err(|e| format!("TLS server name {:?}: {e}", o.server_name))?;
        Ok(Client {
            config: Arc::new(config),
            name,
        })
    }

    pub fn connect(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(Arc::clone(&self.config), self.name.clone())
    }
}

fn default_provider() -> Arc<CryptoProvider> {
    CryptoProvider::get_default()
        .cloned()
        .unwrap_or_else(|| Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
}

/// Write the ciphertext rustls has queued until it has none or the socket is full.
/// Returns the octets written.
pub fn push(tls: &mut ClientConnection, sock: &mut impl Write) -> io::Result<usize> {
    let mut total = 0;
    while tls.wants_write() {
        match tls.write_tls(sock) {
            Ok(n) => total += n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total)
}

/// What one [`pull`] saw on the socket.
pub struct Pulled {
    pub octets: usize,
    /// The peer closed its side (TCP FIN).
    pub eof: bool,
}

/// Read one batch of ciphertext from the socket into rustls. `WouldBlock` means drained.
pub fn pull(tls: &mut ClientConnection, sock: &mut impl Read) -> io::Result<Pulled> {
    loop {
        match tls.read_tls(sock) {
            Ok(0) => return Ok(Pulled { octets: 0, eof: true }),
            Ok(n) => {
                return Ok(Pulled {
                    octets: n,
                    eof: false,
                })
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// `--tls-insecure`: accepts any certificate but still checks the handshake's signatures,
/// so the session is encrypted and the key exchange sound, only unauthenticated.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
