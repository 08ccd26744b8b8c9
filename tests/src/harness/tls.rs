//! A TLS-terminating loopback proxy with a throw-away CA, so tests can check that the worker
//! verifies servers (RabbitMQ over `amqps`, Kubernetes API over `https`) against a CA bundle.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

/// A CA and a server certificate for `localhost` / `127.0.0.1` signed by it.
#[derive(Debug)]
pub struct TestPki {
    /// PEM of the CA (what a client trusts).
    pub ca_pem: String,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: Vec<u8>,
}

impl TestPki {
    /// Generates a fresh CA and server certificate.
    pub fn new() -> TestPki {
        TestPki::issued_for(&["localhost"], true)
    }

    /// A fresh CA and a server certificate for these DNS names only (not `127.0.0.1`): a
    /// client that trusts the CA and connects by address meets a certificate for another name.
    pub fn for_names(names: &[&str]) -> TestPki {
        TestPki::issued_for(names, false)
    }

    fn issued_for(names: &[&str], loopback_ip: bool) -> TestPki {
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "bcw test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca cert");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("server key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("server params");
        if loopback_ip {
            params
                .subject_alt_names
                .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        }
        params.distinguished_name.push(
            DnType::CommonName,
            names.first().copied().unwrap_or("localhost"),
        );
        let server = params.signed_by(&server_key, &issuer).expect("server cert");
        TestPki {
            ca_pem: ca.pem(),
            server_chain: vec![server.der().clone(), ca.der().clone()],
            server_key: server_key.serialize_der(),
        }
    }

    /// Writes the CA PEM into `dir` and returns its path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write ca");
        path
    }

    /// Starts a TLS proxy on loopback forwarding decrypted bytes to `target`; returns its port.
    pub async fn proxy(&self, target: SocketAddr) -> u16 {
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.server_key.clone()));
        let config = rustls::ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(self.server_chain.clone(), key)
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind tls proxy");
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(client).await else {
                        return;
                    };
                    let Ok(mut upstream) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                });
            }
        });
        port
    }
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}
