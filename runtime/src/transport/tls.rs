//! TLS identities derived from the cluster token.
//!
//! Every process that knows the token derives the same certificate authority key from
//! it (an Ed25519 seed = SHA-256 of the token), makes itself a fresh leaf certificate
//! signed by that authority, and trusts only that authority. So both ends of every
//! connection prove they know the token during the TLS handshake (mutual TLS), and a
//! peer with another token is refused before it can send a single message.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use std::sync::Arc;
use thiserror::Error;

/// The name every node's certificate carries and every client checks.
pub const SERVER_NAME: &str = "rayish";

/// Why TLS material could not be built.
#[derive(Debug, Error)]
pub enum TlsError {
    /// Certificate generation failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the configuration.
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The token is empty.
    #[error("the cluster token is empty")]
    EmptyToken,
}

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// This process's TLS material for one cluster.
pub struct ClusterTls {
    /// Client side: trusts the cluster authority, presents our leaf.
    pub client: Arc<rustls::ClientConfig>,
    /// Server side: requires a leaf from the cluster authority.
    pub server: Arc<rustls::ServerConfig>,
}

impl ClusterTls {
    /// Derives the cluster authority from `token` and makes a leaf for this process.
    pub fn from_token(token: &str) -> Result<Self, TlsError> {
        if token.is_empty() {
            return Err(TlsError::EmptyToken);
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());

        let mut seed = Sha256::new();
        seed.update(b"rayish cluster authority v1\0");
        seed.update(token.as_bytes());
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&seed.finalize());
        let ca_key = KeyPair::try_from(pkcs8.as_slice())?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "rayish cluster authority");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca_params.self_signed(&ca_key)?;

        let leaf_key = KeyPair::generate_for(&PKCS_ED25519)?;
        let mut leaf_params = CertificateParams::new(vec![SERVER_NAME.to_string()])?;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, "rayish node");
        let leaf = leaf_params.signed_by(&leaf_key, &ca_cert, &ca_key)?;

        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let roots = Arc::new(roots);
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone()];
        let key = || PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));

        let client = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(roots.clone())
            .with_client_auth_cert(chain.clone(), key())?;
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key())?;
        Ok(Self {
            client: Arc::new(client),
            server: Arc::new(server),
        })
    }
}

/// A fresh random cluster token: 256 bits as 64 hex digits.
pub fn new_token() -> String {
    let bytes: [u8; 32] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The least a given token must carry, in bits.
pub const MIN_TOKEN_BITS: f64 = 128.0;

/// A token too weak to protect a cluster.
#[derive(Debug, Error)]
#[error("the cluster token carries at most ~{bits:.0} bits (fewer than {MIN_TOKEN_BITS}): it could be guessed")]
pub struct WeakToken {
    /// The estimate.
    pub bits: f64,
}

/// An upper estimate of the bits a token carries: its length times the bits of the
/// smallest alphabet among hex digits, letters and digits, base64 and printable ASCII
/// that holds all its characters, and no more than its distinct characters allow
/// (under 8 distinct characters: `aaaa…` is weak however long). Refuses below [`MIN_TOKEN_BITS`].
pub fn check_token_strength(token: &str) -> Result<(), WeakToken> {
    let chars: Vec<char> = token.chars().collect();
    let alphabet = if chars.iter().all(|c| c.is_ascii_hexdigit()) {
        16.0
    } else if chars.iter().all(|c| c.is_ascii_alphanumeric()) {
        62.0
    } else if chars
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '-' | '_' | '='))
    {
        64.0
    } else {
        95.0_f64
    };
    let distinct = chars
        .iter()
        .collect::<std::collections::HashSet<_>>()
        .len()
        .max(1) as f64;
    // Few distinct characters betray a made-up token, not a random one.
    let per_char = if distinct < 8.0 {
        f64::log2(alphabet).min(f64::log2(distinct))
    } else {
        f64::log2(alphabet)
    };
    let bits = chars.len() as f64 * per_char;
    if bits + 1e-9 < MIN_TOKEN_BITS {
        return Err(WeakToken { bits });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_strong_and_short_ones_are_refused() {
        for _ in 0..100 {
            check_token_strength(&new_token()).unwrap();
        }
        assert_eq!(new_token().len(), 64);
        for weak in [
            "a",
            "secret",
            "0123456789abcdef",
            &"a".repeat(200),
            "password1234",
        ] {
            assert!(check_token_strength(weak).is_err(), "{weak:?}");
        }
        // 32 random hex digits: exactly 128 bits.
        check_token_strength("9f86d081884c7d659a2feaa0c55ad015").unwrap();
        // 22 base64 characters carry 132 bits.
        check_token_strength("q2Zx8V+u7/Lr0pYtKc3mWd").unwrap();
    }
}
