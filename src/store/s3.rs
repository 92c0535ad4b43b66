//! An S3-compatible store (AWS, MinIO, R2, Ceph, versitygw...) through object_store, on the layout of the store
//! module: content-addressed objects and generations written create-only (`If-None-Match: *`), the head hint updated
//! with `If-Match` on its ETag.
//!
//! Credentials, in order: `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY` (and `AWS_SESSION_TOKEN`) of the command's
//! environment; the named profile (`store.profile`, else `AWS_PROFILE`, else `default`) of `~/.aws/credentials` and
//! `~/.aws/config` (or `AWS_SHARED_CREDENTIALS_FILE`, `AWS_CONFIG_FILE`); else object_store's chain (web identity,
//! container credentials, instance metadata). They live in memory only and never appear in a message.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};

use super::Created;
use crate::config::S3Location;
use crate::error::{Error, Result};

/// Where credentials came from, for messages (never the credentials).
#[derive(Debug, Clone)]
enum Source {
    Environment,
    Profile(String),
    Chain,
}

/// Objects in an S3 bucket under a prefix.
pub struct S3Blobs {
    store: Arc<dyn ObjectStore>,
    runtime: tokio::runtime::Runtime,
    location: S3Location,
    source: Source,
    /// Values that must never be shown (the secret, the session token), scrubbed from any error text.
    secrets: Vec<String>,
    /// Whether the store answered, asked once per use (a status asks often; a store that does not answer must not
    /// cost its timeout each time).
    reached: std::sync::OnceLock<std::result::Result<bool, String>>,
}

/// The static credentials of a profile in the AWS shared files, if it has them.
fn profile_credentials(
    env: &BTreeMap<String, String>,
    profile: &str,
) -> Option<(String, String, Option<String>)> {
    let home = env.get("HOME").cloned().or_else(|| std::env::var("HOME").ok())?;
    let credentials = env
        .get("AWS_SHARED_CREDENTIALS_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&home).join(".aws/credentials"));
    let config = env
        .get("AWS_CONFIG_FILE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(&home).join(".aws/config"));
    let read = |path: &PathBuf, section: &str| -> BTreeMap<String, String> {
        let Ok(Some(bytes)) = crate::safefs::read_file(path, 1 << 20, true) else { return BTreeMap::new() };
        ini_section(&String::from_utf8_lossy(&bytes), section)
    };
    let mut keys = read(&credentials, profile);
    let in_config = if profile == "default" { "default".to_string() } else { format!("profile {profile}") };
    for (k, v) in read(&config, &in_config) {
        keys.entry(k).or_insert(v);
    }
    let id = keys.remove("aws_access_key_id")?;
    let secret = keys.remove("aws_secret_access_key")?;
    Some((id, secret, keys.remove("aws_session_token")))
}

/// The keys of one `[section]` of an INI file (AWS's shared files), lowercased, values trimmed.
fn ini_section(text: &str, section: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('#') || line.starts_with(';') || line.is_empty() {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            inside = name.trim() == section;
            continue;
        }
        if inside && let Some((k, v)) = line.split_once('=') {
            out.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    out
}

impl S3Blobs {
    /// Connects (lazily: nothing is sent yet) to the store with the credentials `env` leads to.
    pub fn new(location: &S3Location, env: &BTreeMap<String, String>) -> Result<S3Blobs> {
        // One process-wide TLS provider (ring): object_store's reqwest uses rustls without one of its own.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = AmazonS3Builder::new();
        // What object_store would read from the process environment, read from the command's instead.
        for (key, value) in env.iter().filter(|(k, _)| k.starts_with("AWS_")) {
            if let Ok(config) = key.to_ascii_lowercase().parse::<AmazonS3ConfigKey>() {
                builder = builder.with_config(config, value);
            }
        }
        let mut secrets = Vec::new();
        let source = match (env.get("AWS_ACCESS_KEY_ID"), env.get("AWS_SECRET_ACCESS_KEY")) {
            (Some(_), Some(secret)) => {
                secrets.push(secret.clone());
                secrets.extend(env.get("AWS_SESSION_TOKEN").cloned());
                Source::Environment
            }
            _ => {
                let profile = location
                    .profile
                    .clone()
                    .or_else(|| env.get("AWS_PROFILE").cloned())
                    .unwrap_or_else(|| "default".into());
                match profile_credentials(env, &profile) {
                    Some((id, secret, token)) => {
                        secrets.push(secret.clone());
                        builder = builder.with_access_key_id(id).with_secret_access_key(secret);
                        if let Some(token) = token {
                            secrets.push(token.clone());
                            builder = builder.with_token(token);
                        }
                        Source::Profile(profile)
                    }
                    None => Source::Chain,
                }
            }
        };
        builder = builder
            .with_bucket_name(&location.bucket)
            .with_region(&location.region)
            .with_allow_http(location.allow_http)
            .with_retry(object_store::RetryConfig {
                backoff: Default::default(),
                max_retries: 4,
                retry_timeout: Duration::from_secs(location.timeout_secs),
            })
            .with_client_options(
                object_store::ClientOptions::new()
                    .with_connect_timeout(Duration::from_secs(5))
                    .with_timeout(Duration::from_secs(location.timeout_secs.max(10)))
                    .with_allow_http(location.allow_http),
            );
        if let Some(endpoint) = &location.endpoint {
            builder = builder.with_endpoint(endpoint).with_virtual_hosted_style_request(false);
        }
        let store = builder.build().map_err(|e| {
            Error::Usage(format!(
                "cannot use the store {}: {}",
                location.describe(),
                scrub(&e.to_string(), &secrets)
            ))
        })?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::failed(format!("cannot start the store's client: {e}"), "try again"))?;
        Ok(S3Blobs {
            store: Arc::new(store),
            runtime,
            location: location.clone(),
            source,
            secrets,
            reached: std::sync::OnceLock::new(),
        })
    }

    fn path(&self, key: &str) -> ObjectPath {
        if self.location.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.location.prefix))
        }
    }

    /// One line that names the cause and the fix, exit 2; the raw text only when nothing better is known, scrubbed.
    fn error(&self, what: &str, key: &str, e: &object_store::Error) -> Error {
        // The cause is often only down the chain (`error sending request` <- ... <- `Connection refused`).
        let mut text = e.to_string();
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            text += &format!(" <- {s}");
            source = s.source();
        }
        let text = scrub(&text, &self.secrets);
        let store = self.location.describe();
        let credentials = match &self.source {
            Source::Environment => "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".to_string(),
            Source::Profile(p) => format!("the profile {p:?} of ~/.aws/credentials"),
            Source::Chain => "the credentials found (none in the environment or ~/.aws)".to_string(),
        };
        let (cause, fix) = classify(&text, &self.location, &credentials);
        Error::Usage(format!("cannot {what} {key} in {store}: {cause}; {fix}. Nothing was changed"))
    }

    fn block<T>(&self, f: impl std::future::Future<Output = T>) -> T {
        self.runtime.block_on(f)
    }
}

/// The cause of a store error and its fix, from the error's text (and its sources').
fn classify(text: &str, location: &S3Location, credentials: &str) -> (String, String) {
    let has = |needles: &[&str]| needles.iter().any(|n| text.contains(n));
    if has(&["RequestTimeTooSkewed", "RequestExpired"]) {
        (
            "this machine's clock differs too much from the store's".to_string(),
            "set the clock right (timedatectl set-ntp true)".to_string(),
        )
    } else if has(&["NoSuchBucket"]) {
        (
            format!("the bucket {:?} does not exist", location.bucket),
            "create it, or fix store.url".to_string(),
        )
    } else if has(&[
        "SignatureDoesNotMatch",
        "InvalidAccessKeyId",
        "AccessDenied",
        "403 Forbidden",
        "InvalidToken",
        "ExpiredToken",
    ]) {
        ("the store refused the credentials (403)".to_string(), format!("check {credentials}"))
    } else if has(&[
        "PermanentRedirect",
        "AuthorizationHeaderMalformed",
        "IllegalLocationConstraint",
        "301 Moved Permanently",
    ]) {
        (
            format!("the bucket is not in the region {:?}", location.region),
            "set store.region to the bucket's region".to_string(),
        )
    } else if has(&[
        "certificate",
        "Certificate",
        "InvalidContentType",
        "tls",
        "TLS",
        "handshake",
        "CorruptMessage",
    ]) {
        (
            "the TLS connection to the store failed".to_string(),
            "check store.endpoint (https://) and the machine's CA certificates".to_string(),
        )
    } else if has(&[
        "Connection refused",
        "connection refused",
        "dns error",
        "error sending request",
        "tcp connect",
        "timed out",
        "Timeout",
    ]) {
        (
            "the store cannot be reached".to_string(),
            "check store.endpoint and the network, or start the store".to_string(),
        )
    } else {
        (
            text.lines().next().unwrap_or("unknown error").chars().take(300).collect(),
            "check the store's settings ([store] keys)".to_string(),
        )
    }
}

/// How much longer than `store.timeout_secs` the first probe of a store waits before it calls the store silent: the
/// retries stop asking after `timeout_secs` but finish their last backoff (at most 0.8 s with four retries) and request.
const REACH_GRACE_SECS: u64 = 2;

/// Whether an error is a missing object (a missing bucket is reported the same way by object_store, and is not).
fn missing_object(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::NotFound { .. }) && !e.to_string().contains("NoSuchBucket")
}

/// Replaces every secret in `text` by `***`.
fn scrub(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        out = out.replace(s.as_str(), "***");
    }
    out
}

impl super::Blobs for S3Blobs {
    fn put(&self, key: &str, data: &[u8]) -> Result<()> {
        let path = self.path(key);
        let payload = PutPayload::from(data.to_vec());
        self.block(async {
            self.store.put(&path, payload).await.map(|_| ()).map_err(|e| self.error("write", key, &e))
        })
    }

    fn create(&self, key: &str, data: &[u8]) -> Result<Created> {
        Ok(if self.put_if(key, data, None)? { Created::New } else { Created::Exists })
    }

    fn get(&self, key: &str, max: u64) -> Result<Option<Vec<u8>>> {
        Ok(self.get_tagged(key, max)?.map(|(bytes, _)| bytes))
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        use futures_util::TryStreamExt;
        let base = if self.location.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", self.location.prefix)
        };
        // object_store lists by whole path segments: list the folder, keep what starts with the prefix.
        let (folder, _) = prefix.rsplit_once('/').unwrap_or(("", prefix));
        let path = self.path(folder);
        let listed: Vec<object_store::ObjectMeta> = self.block(async {
            let root = if folder.is_empty() && self.location.prefix.is_empty() { None } else { Some(&path) };
            self.store.list(root).try_collect().await.map_err(|e| self.error("list", prefix, &e))
        })?;
        let mut out: Vec<String> = listed
            .into_iter()
            .filter_map(|m| m.location.as_ref().strip_prefix(&base).map(String::from))
            .filter(|k| k.starts_with(prefix))
            .collect();
        out.sort();
        Ok(out)
    }

    fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key);
        self.block(async {
            match self.store.delete(&path).await {
                Ok(()) => Ok(()),
                Err(e) if missing_object(&e) => Ok(()),
                Err(e) => Err(self.error("remove", key, &e)),
            }
        })
    }

    fn describe(&self) -> String {
        format!("the store {}", self.location.describe())
    }

    fn reachable(&self) -> Result<bool> {
        // The store's marker, asked once: it answers, the bucket exists, the credentials work.
        let reached = self.reached.get_or_init(|| {
            let path = self.path("format.json");
            // Past the retries' own budget (`retry_timeout`, then one last backoff and request), so that a store
            // refusing connections is told as such and only one that never answers meets this limit.
            let limit = Duration::from_secs(self.location.timeout_secs.min(10) + REACH_GRACE_SECS);
            self.block(async {
                // A listing: a missing bucket is an error here (a HEAD of a missing object would not say).
                let listed = async {
                    use futures_util::StreamExt;
                    let mut listing = self.store.list(Some(&path));
                    listing.next().await.transpose()
                };
                match tokio::time::timeout(limit, listed).await {
                    Ok(Ok(_)) => Ok(true),
                    Ok(Err(e)) => Err(self.error("reach", "format.json", &e).to_string()),
                    Err(_) => Err(format!(
                        "cannot reach format.json in {}: the store did not answer within {}s; check store.endpoint and \
                         the network. Nothing was changed",
                        self.location.describe(),
                        limit.as_secs()
                    )),
                }
            })
        });
        reached.clone().map_err(Error::Usage)
    }

    /// The object and its ETag, or `None`.
    fn get_tagged(&self, key: &str, max: u64) -> Result<Option<(Vec<u8>, Option<String>)>> {
        let path = self.path(key);
        self.block(async {
            let got = match self.store.get(&path).await {
                Ok(g) => g,
                Err(e) if missing_object(&e) => return Ok(None),
                Err(e) => return Err(self.error("read", key, &e)),
            };
            if got.meta.size > max {
                return Err(Error::Corrupt(format!(
                    "{key} in {} is {} bytes, more than the {max} dreamerd reads",
                    self.location.describe(),
                    got.meta.size
                )));
            }
            let tag = got.meta.e_tag.clone();
            let bytes = got.bytes().await.map_err(|e| self.error("read", key, &e))?;
            Ok(Some((bytes.to_vec(), tag)))
        })
    }

    /// Replaces the object only if it still has ETag `tag` (`None`: only if there is none); false when it changed.
    fn put_if(&self, key: &str, data: &[u8], tag: Option<String>) -> Result<bool> {
        let mode = match tag {
            Some(e_tag) => PutMode::Update(UpdateVersion { e_tag: Some(e_tag), version: None }),
            None => PutMode::Create,
        };
        let path = self.path(key);
        let payload = PutPayload::from(data.to_vec());
        self.block(async {
            match self.store.put_opts(&path, payload, PutOptions { mode, ..Default::default() }).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::Precondition { .. } | object_store::Error::AlreadyExists { .. }) => {
                    Ok(false)
                }
                Err(e) => Err(self.error("write", key, &e)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_of_the_shared_files() {
        let text = "[default]\naws_access_key_id = A\naws_secret_access_key = S\n\n[team]\n# c\naws_access_key_id=B\n";
        assert_eq!(ini_section(text, "default")["aws_secret_access_key"], "S");
        assert_eq!(ini_section(text, "team")["aws_access_key_id"], "B");
        assert!(ini_section(text, "none").is_empty());
        assert_eq!(scrub("sig for s3cr3tvalue failed", &["s3cr3tvalue".into()]), "sig for *** failed");
    }

    #[test]
    fn causes_from_what_stores_answer() {
        let loc = match crate::config::StoreLocation::parse("s3://bucket/p").unwrap() {
            crate::config::StoreLocation::S3(s) => s,
            _ => unreachable!(),
        };
        let cause = |t: &str| classify(t, &loc, "the credentials").0;
        // Texts object_store 0.14.2 prints (measured against a real S3-protocol server) and AWS's error codes.
        assert!(
            cause(
                "The operation lacked the necessary privileges to complete for path x: Error performing PUT \
                       http://127.0.0.1:1/bucket/x - Server returned non-2xx status code: 403 Forbidden: \
                       <Error><Code>SignatureDoesNotMatch</Code></Error>"
            )
            .contains("credentials")
        );
        assert!(cause("404 Not Found: <Error><Code>NoSuchBucket</Code></Error>").contains("does not exist"));
        assert!(cause("403 Forbidden: <Error><Code>RequestTimeTooSkewed</Code></Error>").contains("clock"));
        assert!(cause("400 Bad Request: <Error><Code>RequestTimeTooSkewed</Code></Error>").contains("clock"));
        assert!(
            cause("301 Moved Permanently: <Error><Code>PermanentRedirect</Code></Error>").contains("region")
        );
        assert!(
            cause(
                "HTTP error: error sending request <- client error (Connect) <- invalid peer certificate: \
                       UnknownIssuer"
            )
            .contains("TLS")
        );
        assert!(
            cause(
                "HTTP error: error sending request <- tcp connect error <- Connection refused (os error 111)"
            )
            .contains("cannot be reached")
        );
    }
}
