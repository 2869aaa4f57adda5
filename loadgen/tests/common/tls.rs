//! TLS for the test servers: certificates made at test time and a blocking rustls server side.

use std::cell::RefCell;
use std::io::{BufReader, BufWriter, Cursor, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::{ServerConfig, ServerConnection, StreamOwned};

use super::{greet, serve_commands, Session};

/// How the server offers TLS.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// STARTTLS, discarding what was pipelined behind it (RFC 3207 and CVE-2011-0411).
    Starttls,
    /// STARTTLS, but the octets pipelined behind it are run as if sent inside TLS: the
    /// command-injection bug of CVE-2011-0411.
    Injectable,
    /// TLS from the first octet (RFC 8314).
    Implicit,
}

#[derive(Clone)]
pub struct ServerTls {
    pub config: Arc<ServerConfig>,
    pub mode: Mode,
}

/// A self-signed certificate for 127.0.0.1 and its server configuration.
pub struct Pki {
    /// The certificate in PEM: the CA file a client trusts.
    pub ca_pem: String,
    /// Its private key in PEM (PKCS#8), for a server run as its own process.
    pub key_pem: String,
    pub config: Arc<ServerConfig>,
}

impl Pki {
    pub fn new() -> Pki {
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".into(), "localhost".into()])
            .expect("rcgen certificate");
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.signing_key.serialize_der()));
        let chain = vec![CertificateDer::from(ck.cert.der().to_vec())];
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        Pki {
            ca_pem: ck.cert.pem(),
            key_pem: ck.signing_key.serialize_pem(),
            config: Arc::new(config),
        }
    }

    pub fn server(&self, mode: Mode) -> ServerTls {
        ServerTls {
            config: Arc::clone(&self.config),
            mode,
        }
    }

    /// Write the CA file into `dir`; the key is never written.
    pub fn ca_file(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, &self.ca_pem).unwrap();
        p
    }
}

/// One blocking TLS stream read and written through two buffered halves.
struct Shared(Rc<RefCell<StreamOwned<ServerConnection, TcpStream>>>);

impl Read for Shared {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().read(buf)
    }
}

impl Write for Shared {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.borrow_mut().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.0.borrow_mut().flush()
    }
}

fn wrap(
    s: TcpStream,
    t: &ServerTls,
) -> std::io::Result<Rc<RefCell<StreamOwned<ServerConnection, TcpStream>>>> {
    let conn = ServerConnection::new(Arc::clone(&t.config)).map_err(std::io::Error::other)?;
    Ok(Rc::new(RefCell::new(StreamOwned::new(conn, s))))
}

/// One connection of a TLS test server.
pub fn serve(s: TcpStream, t: &ServerTls) -> std::io::Result<()> {
    if t.mode == Mode::Implicit {
        let st = wrap(s, t)?;
        let mut r = BufReader::new(Shared(Rc::clone(&st)));
        let mut w = BufWriter::new(Shared(st));
        return greet(&mut r, &mut w, &mut Session::default()).map(|_| ());
    }
    let raw = s.try_clone()?;
    let mut w = BufWriter::new(s.try_clone()?);
    let mut r = BufReader::new(s);
    let mut session = Session {
        offer_starttls: true,
        ..Session::default()
    };
    let Some(pipelined) = greet(&mut r, &mut w, &mut session)? else {
        return Ok(());
    };
    let injected = if t.mode == Mode::Injectable {
        pipelined
    } else {
        vec![]
    };
    let st = wrap(raw, t)?;
    let mut r = BufReader::new(Cursor::new(injected).chain(Shared(Rc::clone(&st))));
    let mut w = BufWriter::new(Shared(st));
    serve_commands(&mut r, &mut w, &mut Session::default()).map(|_| ())
}
