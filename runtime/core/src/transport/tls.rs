//! TLS identities derived from the cluster token.
//!
//! Every process that knows the token derives the same certificate authority key from
//! it ([`ClusterKey`]: an Ed25519 seed = Argon2id of the token), makes itself a fresh
//! leaf certificate signed by that authority, and trusts only that authority. So both
//! ends of every connection prove they know the token during the TLS handshake (mutual
//! TLS), and a peer with another token is refused before it can send a single message.
//!
//! A captured handshake holds leaf certificates signed by the authority, so it lets an
//! attacker test guesses of the token offline. Two things make that hopeless: a given
//! token must carry ≥ 128 bits ([`check_token_strength`]), and each guess costs an
//! Argon2id derivation (19 MiB, 2 passes: OWASP's minimum; ~30 ms here) instead of
//! a SHA-256. Processes derive it once: a node hands its workers the derived key, not
//! the token.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, PKCS_ED25519};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
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
    /// The key derivation failed.
    #[error("cluster key: {0}")]
    Kdf(String),
}

/// DER prefix of a PKCS#8 v1 Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The cluster authority's Ed25519 seed, derived from the token.
#[derive(Clone, PartialEq, Eq)]
pub struct ClusterKey([u8; 32]);

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterKey(..)")
    }
}

impl ClusterKey {
    /// Derives the key from `token` (Argon2id, ~30 ms).
    pub fn derive(token: &str) -> Result<Self, TlsError> {
        use argon2::{Algorithm, Argon2, Params, Version};
        if token.is_empty() {
            return Err(TlsError::EmptyToken);
        }
        let params =
            Params::new(19 * 1024, 2, 1, Some(32)).map_err(|e| TlsError::Kdf(e.to_string()))?;
        let mut seed = [0u8; 32];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(token.as_bytes(), b"rayish cluster authority v2", &mut seed)
            .map_err(|e| TlsError::Kdf(e.to_string()))?;
        Ok(Self(seed))
    }

    /// The key as 64 hex digits (to hand to a worker in its environment).
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The key from [`Self::to_hex`]'s form.
    pub fn from_hex(text: &str) -> Result<Self, TlsError> {
        let mut seed = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut seed)
            .map_err(|_| TlsError::Kdf("a cluster key is 64 hex digits".into()))?;
        Ok(Self(seed))
    }
}

/// This process's TLS material for one cluster.
pub struct ClusterTls {
    /// Client side: trusts the cluster authority, presents our leaf.
    pub client: Arc<rustls::ClientConfig>,
    /// Server side: requires a leaf from the cluster authority.
    pub server: Arc<rustls::ServerConfig>,
    /// The key a QUIC endpoint signs its stateless resets with: derived from the
    /// cluster key, so a process restarted on the same address (a head after a
    /// crash) can tell its peers' old connections that they are gone, and they
    /// notice at their next packet rather than after their idle timeout.
    pub reset_key: [u8; 32],
    /// The key a QUIC endpoint's connection ids are made and checked with, from
    /// the cluster key for the same reason: a restarted process must recognise its
    /// predecessor's connection ids as its own to answer them with a reset.
    pub cid_key: u64,
}

impl ClusterTls {
    /// Derives the cluster authority from `token` and makes a leaf for this process.
    pub fn from_token(token: &str) -> Result<Self, TlsError> {
        Self::from_key(&ClusterKey::derive(token)?)
    }

    /// The cluster authority of `key` and a fresh leaf for this process.
    pub fn from_key(key: &ClusterKey) -> Result<Self, TlsError> {
        // A key of its own, not the cluster key: a reset's tag reveals nothing of it.
        let cluster = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &key.0);
        let tag = ring::hmac::sign(&cluster, b"rayish QUIC stateless reset key v1");
        let mut reset_key = [0u8; 32];
        reset_key.copy_from_slice(tag.as_ref());
        let tag = ring::hmac::sign(&cluster, b"rayish QUIC connection id key v1");
        let mut cid_key = [0u8; 8];
        cid_key.copy_from_slice(&tag.as_ref()[..8]);
        let cid_key = u64::from_le_bytes(cid_key);
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(&key.0);
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
            reset_key,
            cid_key,
        })
    }
}

/// A fresh random cluster token: 256 bits as 64 hex digits.
pub fn new_token() -> String {
    hex::encode(rand::random::<[u8; 32]>())
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
    fn reset_and_connection_id_keys_follow_the_token_not_the_process() {
        let token = "9f86d081884c7d659a2feaa0c55ad015";
        let key = ClusterKey::derive(token).expect("key");
        // Two processes of one cluster (a head and the head restarted after it)
        // share them, though each has a fresh leaf certificate ...
        let (a, b) = (
            ClusterTls::from_key(&key).expect("tls"),
            ClusterTls::from_key(&key).expect("tls"),
        );
        assert_eq!((a.reset_key, a.cid_key), (b.reset_key, b.cid_key));
        // ... another cluster has its own, and neither is the cluster key itself.
        let other = ClusterTls::from_token("0f86d081884c7d659a2feaa0c55ad015").expect("tls");
        assert_ne!(a.reset_key, other.reset_key);
        assert_ne!(a.cid_key, other.cid_key);
        assert_ne!(a.reset_key, key.0);
    }

    #[test]
    fn the_cluster_key_is_a_slow_deterministic_function_of_the_token() {
        let a = ClusterKey::derive("9f86d081884c7d659a2feaa0c55ad015").unwrap();
        assert_eq!(
            a,
            ClusterKey::derive("9f86d081884c7d659a2feaa0c55ad015").unwrap()
        );
        assert_ne!(
            a,
            ClusterKey::derive("9f86d081884c7d659a2feaa0c55ad016").unwrap()
        );
        assert_eq!(ClusterKey::from_hex(&a.to_hex()).unwrap(), a);
        assert!(ClusterKey::from_hex("xyz").is_err());
        assert!(ClusterKey::derive("").is_err());
        assert_eq!(format!("{a:?}"), "ClusterKey(..)", "never printed");
    }

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
