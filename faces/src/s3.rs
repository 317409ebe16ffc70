//! Inputs in an S3-compatible object store, named `s3://bucket/prefix`, through the
//! `object_store` crate.
//!
//! Credentials, region and endpoint come from the usual AWS environment of the
//! process that reads (the driver, or a node's workers when they read):
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_REGION` or
//! `AWS_DEFAULT_REGION`, and `AWS_ENDPOINT_URL` for a server other than AWS's. A plain
//! `http://` endpoint is allowed when it is named explicitly (requests are signed; the
//! secret key itself is never sent).
//!
//! An object's stamp is its size and last-modified time: what S3 lists for every object
//! without reading it, and what changes when the object is written again, so it plays
//! the part a file's size and mtime play (see [`crate::journal`]).
//!
//! The crate is async; every call here blocks on one small tokio runtime shared by the
//! process, so that the chain's handlers stay plain functions.

use crate::inputs::{Stamp, IMAGE_EXTENSIONS};
use futures_util::TryStreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as StorePath;
use object_store::{ObjectMeta, ObjectStore, RetryConfig};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How an input names an object-store location.
pub const SCHEME: &str = "s3://";

/// Errors reaching the object store.
#[derive(Debug, thiserror::Error)]
pub enum S3Error {
    /// Not `s3://bucket[/prefix]`.
    #[error("{0:?} is not an s3:// URL with a bucket (s3://bucket/prefix)")]
    BadUrl(String),
    /// The client could not be set up (a bad region or endpoint in the environment).
    #[error("setting up the S3 client for bucket {bucket}: {source}")]
    Client {
        /// The bucket.
        bucket: String,
        /// Why.
        source: object_store::Error,
    },
    /// A request failed.
    #[error("{url}: {source}")]
    Request {
        /// What was asked for.
        url: String,
        /// Why it failed.
        source: object_store::Error,
    },
    /// A request did not finish in time.
    #[error("{url}: no answer in {secs} s")]
    TimedOut {
        /// What was asked for.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// The process's async runtime could not start.
    #[error("starting the S3 client's runtime: {0}")]
    Runtime(String),
}

/// A parsed `s3://bucket/key-or-prefix`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Url {
    /// The bucket.
    pub bucket: String,
    /// The key, or the prefix of a listing (no leading or trailing `/`; may be empty).
    pub key: String,
}

impl S3Url {
    /// Parses `s3://bucket[/key]`; `None` if `text` is not an `s3://` URL at all.
    pub fn parse(text: &str) -> Option<Result<S3Url, S3Error>> {
        let rest = text.strip_prefix(SCHEME)?;
        let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Some(Err(S3Error::BadUrl(text.to_string())));
        }
        Some(Ok(S3Url {
            bucket: bucket.to_string(),
            key: key.trim_matches('/').to_string(),
        }))
    }

    fn object(&self, key: &str) -> String {
        format!("{SCHEME}{}/{key}", self.bucket)
    }
}

/// Whether `path` names an object-store input.
pub fn is_s3(path: &str) -> bool {
    path.starts_with(SCHEME)
}

fn runtime() -> Result<&'static tokio::runtime::Runtime, S3Error> {
    static RUNTIME: OnceLock<Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("rayish-faces-s3")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| S3Error::Runtime(e.clone()))
}

/// The client of `bucket`, made once per process.
fn store(bucket: &str) -> Result<Arc<dyn ObjectStore>, S3Error> {
    static STORES: OnceLock<Mutex<HashMap<String, Arc<dyn ObjectStore>>>> = OnceLock::new();
    let stores = STORES.get_or_init(Default::default);
    let mut stores = stores.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = stores.get(bucket) {
        return Ok(Arc::clone(s));
    }
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    let endpoint = std::env::var("AWS_ENDPOINT_URL").or_else(|_| std::env::var("AWS_ENDPOINT"));
    if endpoint.is_ok_and(|e| e.starts_with("http://")) {
        builder = builder.with_allow_http(true);
    }
    // A wrong endpoint or a dead server fails in seconds, not after the crate's
    // default three minutes of retries; the read timeout bounds each read anyway.
    let retry = RetryConfig {
        max_retries: 3,
        retry_timeout: Duration::from_secs(30),
        ..RetryConfig::default()
    };
    let store: Arc<dyn ObjectStore> = Arc::new(builder.with_retry(retry).build().map_err(
        |source| S3Error::Client {
            bucket: bucket.to_string(),
            source,
        },
    )?);
    stores.insert(bucket.to_string(), Arc::clone(&store));
    Ok(store)
}

fn stamp(meta: &ObjectMeta) -> Stamp {
    Stamp {
        size: meta.size,
        mtime_ns: meta
            .last_modified
            .timestamp_nanos_opt()
            .map_or(0, i128::from),
    }
}

/// Every image object under `url`'s prefix (keys with an image extension, no hidden
/// name component), sorted by key, as `s3://` URLs with their stamps.
pub fn list(url: &S3Url) -> Result<Vec<(String, Stamp)>, S3Error> {
    let store = store(&url.bucket)?;
    let prefix = (!url.key.is_empty()).then(|| StorePath::from(url.key.as_str()));
    let metas: Vec<ObjectMeta> = runtime()?
        .block_on(store.list(prefix.as_ref()).try_collect())
        .map_err(|source| S3Error::Request {
            url: url.object(&url.key),
            source,
        })?;
    let mut found: Vec<(String, Stamp)> = metas
        .iter()
        .filter(|m| is_image_key(m.location.as_ref()))
        .map(|m| (url.object(m.location.as_ref()), stamp(m)))
        .collect();
    found.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(found)
}

fn is_image_key(key: &str) -> bool {
    let hidden = key.split('/').any(|part| part.starts_with('.'));
    let extension = key
        .rsplit_once('.')
        .map(|(_, e)| e.to_lowercase())
        .unwrap_or_default();
    !hidden && IMAGE_EXTENSIONS.contains(&extension.as_str())
}

/// The stamp of the object at `url`, asked for within `timeout`.
pub fn head(url: &S3Url, timeout: Duration) -> Result<Stamp, S3Error> {
    let store = store(&url.bucket)?;
    let location = StorePath::from(url.key.as_str());
    let asked =
        runtime()?.block_on(async { tokio::time::timeout(timeout, store.head(&location)).await });
    let object = url.object(&url.key);
    match asked {
        Ok(Ok(meta)) => Ok(stamp(&meta)),
        Ok(Err(source)) => Err(S3Error::Request {
            url: object,
            source,
        }),
        Err(_) => Err(S3Error::TimedOut {
            url: object,
            secs: timeout.as_secs(),
        }),
    }
}

/// What reading an object gave.
pub enum Fetched {
    /// Its bytes and stamp.
    Bytes(Vec<u8>, Stamp),
    /// It is larger than the limit (its size, at least), so was not read on.
    TooLarge(u64),
    /// The read did not finish within the timeout.
    TimedOut,
}

/// Reads the object at `url`, refusing it unread (from the response headers) if it is
/// over `limit` bytes, and giving up after `timeout`.
pub fn read(url: &S3Url, limit: u64, timeout: Duration) -> Result<Fetched, S3Error> {
    let store = store(&url.bucket)?;
    let location = StorePath::from(url.key.as_str());
    let fetch = async {
        let got = store.get(&location).await?;
        let stamp = stamp(&got.meta);
        if stamp.size > limit {
            return Ok(Fetched::TooLarge(stamp.size));
        }
        let mut bytes = Vec::with_capacity(stamp.size as usize);
        let mut body = got.into_stream();
        while let Some(chunk) = body.try_next().await? {
            bytes.extend_from_slice(&chunk);
            if bytes.len() as u64 > limit {
                return Ok(Fetched::TooLarge(bytes.len() as u64));
            }
        }
        Ok(Fetched::Bytes(bytes, stamp))
    };
    // The timer is made inside the runtime: outside, there is no timer to register with.
    match runtime()?.block_on(async { tokio::time::timeout(timeout, fetch).await }) {
        Ok(result) => result.map_err(|source| S3Error::Request {
            url: url.object(&url.key),
            source,
        }),
        Err(_) => Ok(Fetched::TimedOut),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_name_a_bucket_and_a_key_or_prefix() {
        assert_eq!(S3Url::parse("/photos/a.jpg").map(|r| r.is_ok()), None);
        let u = S3Url::parse("s3://bucket/photos/2024/").and_then(Result::ok);
        assert_eq!(
            u,
            Some(S3Url {
                bucket: "bucket".into(),
                key: "photos/2024".into()
            })
        );
        let whole = S3Url::parse("s3://bucket").and_then(Result::ok);
        assert_eq!(whole.map(|u| u.key), Some(String::new()));
        assert!(matches!(
            S3Url::parse("s3:///key"),
            Some(Err(S3Error::BadUrl(_)))
        ));
    }

    #[test]
    fn image_keys_are_chosen_by_extension_and_hidden_ones_left_out() {
        assert!(is_image_key("photos/a.JPG"));
        assert!(is_image_key("b.webp"));
        assert!(!is_image_key("photos/notes.txt"));
        assert!(!is_image_key("photos/.thumbs/a.jpg"));
        assert!(!is_image_key("photos/jpg"));
    }
}
