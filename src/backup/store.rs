//! Where backups live: a local directory or an S3 bucket, both behind
//! `object_store`, chosen by URL (`file:///abs/dir`, `s3://bucket/prefix`).
//!
//! Every node writes under `<url>/<node id>/`:
//!
//! ```text
//! <node id>/segments/<index, 20 digits>.seg       log segments (`segment`)
//! <node id>/snapshots/<unix ms, 16 digits>.db.zst  snapshot files (`snapshot`)
//! <node id>/snapshots/<unix ms, 16 digits>.json    their manifests, written last
//! ```
//!
//! Names sort in the order they were written, so a listing is a timeline.
//! Every call is bounded by `backup.timeout`; failures are errors that name
//! the object, never panics.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{
    ClientConfigKey, ObjectStore, ObjectStoreExt, PutPayload, RetryConfig, WriteMultipart,
};

use super::BackupError;
use crate::config::BackupConfig;

/// A parsed backup URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine (absolute).
    Dir(std::path::PathBuf),
    /// A bucket and a key prefix (may be empty).
    S3 { bucket: String, prefix: String },
}

impl Location {
    pub fn parse(url: &str) -> Result<Location, String> {
        if let Some(path) = url.strip_prefix("file://") {
            if !path.starts_with('/') {
                return Err(format!(
                    "{url:?}: a file:// URL needs an absolute path (file:///dir)"
                ));
            }
            return Ok(Location::Dir(path.into()));
        }
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
            if bucket.is_empty() {
                return Err(format!("{url:?}: no bucket (s3://bucket/prefix)"));
            }
            return Ok(Location::S3 {
                bucket: bucket.to_string(),
                prefix: prefix.trim_matches('/').to_string(),
            });
        }
        Err(format!(
            "{url:?}: a backup URL is file:///abs/dir or s3://bucket/prefix"
        ))
    }
}

/// The objects of one backup location.
#[derive(Clone)]
pub struct Store {
    inner: Arc<dyn ObjectStore>,
    root: Path,
    url: String,
    timeout: Duration,
}

/// One object as a listing shows it.
#[derive(Debug, Clone)]
pub struct Listed {
    /// The name below the directory listed (e.g. `00000000000000000042.seg`).
    pub name: String,
    pub size: u64,
}

impl Store {
    pub fn open(url: &str, config: &BackupConfig) -> Result<Store, BackupError> {
        let location = Location::parse(url).map_err(BackupError::Config)?;
        let storage = |e: object_store::Error| BackupError::Config(format!("{url}: {e}"));
        let (inner, root): (Arc<dyn ObjectStore>, Path) = match location {
            Location::Dir(dir) => {
                std::fs::create_dir_all(&dir)
                    .map_err(|e| BackupError::Config(format!("creating {}: {e}", dir.display())))?;
                let fs = LocalFileSystem::new_with_prefix(&dir).map_err(storage)?;
                (Arc::new(fs), Path::default())
            }
            Location::S3 { bucket, prefix } => (
                Arc::new(s3(&bucket, config).build().map_err(storage)?),
                Path::from(prefix),
            ),
        };
        Ok(Store {
            inner,
            root,
            url: url.trim_end_matches('/').to_string(),
            timeout: config.timeout,
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// The full name of `rel` (for messages: the object an error is about).
    pub fn describe(&self, rel: &str) -> String {
        format!("{}/{rel}", self.url)
    }

    fn path(&self, rel: &str) -> Path {
        self.root.parts().chain(Path::from(rel).parts()).collect()
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        rel: &str,
        work: impl std::future::Future<Output = object_store::Result<T>>,
    ) -> Result<T, BackupError> {
        match tokio::time::timeout(self.timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(object_store::Error::NotFound { .. })) => {
                Err(BackupError::Missing(self.describe(rel)))
            }
            Ok(Err(e)) => Err(BackupError::Storage {
                op,
                object: self.describe(rel),
                reason: e.to_string(),
            }),
            Err(_) => Err(BackupError::Storage {
                op,
                object: self.describe(rel),
                reason: format!("timed out after {:?} (backup.timeout)", self.timeout),
            }),
        }
    }

    /// Writes a whole object at once (atomically: it exists whole or not).
    pub async fn put(&self, rel: &str, bytes: Bytes) -> Result<(), BackupError> {
        let path = self.path(rel);
        let payload = PutPayload::from_bytes(bytes);
        self.bounded("upload", rel, self.inner.put(&path, payload))
            .await
            .map(drop)
    }

    /// Uploads a file in parts, never holding more than a few parts in
    /// memory. Returns the bytes uploaded.
    pub async fn put_file(&self, rel: &str, file: &FsPath) -> Result<u64, BackupError> {
        use tokio::io::AsyncReadExt;
        const PART: usize = 8 * 1024 * 1024;
        let path = self.path(rel);
        let upload = self
            .bounded("upload", rel, self.inner.put_multipart(&path))
            .await?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut input = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; PART];
        let mut total = 0u64;
        loop {
            let n = input.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            total += n as u64;
            self.bounded("upload", rel, writer.wait_for_capacity(2))
                .await?;
            writer.write(&buf[..n]);
        }
        self.bounded("upload", rel, writer.finish()).await?;
        Ok(total)
    }

    pub async fn get(&self, rel: &str) -> Result<Bytes, BackupError> {
        let path = self.path(rel);
        let got = self.bounded("download", rel, self.inner.get(&path)).await?;
        self.bounded("download", rel, got.bytes()).await
    }

    /// Streams an object into `sink` chunk by chunk; `progress` sees the
    /// bytes so far after each chunk.
    pub async fn get_streaming(
        &self,
        rel: &str,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, BackupError> {
        let path = self.path(rel);
        let got = self.bounded("download", rel, self.inner.get(&path)).await?;
        let mut stream = got.into_stream();
        let mut total = 0u64;
        loop {
            let next = self.bounded("download", rel, async { stream.next().await.transpose() });
            let Some(chunk) = next.await? else { break };
            sink(&chunk)?;
            total += chunk.len() as u64;
            progress(total);
        }
        Ok(total)
    }

    /// The objects directly in `dir`, in name order.
    pub async fn list(&self, dir: &str) -> Result<Vec<Listed>, BackupError> {
        let mut out: Vec<Listed> = (self.listing(dir).await?.objects.into_iter())
            .filter_map(|meta| {
                let name = meta.location.filename()?.to_string();
                Some(Listed {
                    name,
                    size: meta.size,
                })
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// The directories directly in `dir` (node ids at the top), in order.
    pub async fn list_dirs(&self, dir: &str) -> Result<Vec<String>, BackupError> {
        let mut out: Vec<String> = (self.listing(dir).await?.common_prefixes.into_iter())
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// One level of `dir`, every page of it.
    async fn listing(&self, dir: &str) -> Result<object_store::ListResult, BackupError> {
        let path = self.path(dir);
        self.bounded("list", dir, self.inner.list_with_delimiter(Some(&path)))
            .await
    }

    pub async fn delete(&self, rel: &str) -> Result<(), BackupError> {
        let path = self.path(rel);
        match self.bounded("delete", rel, self.inner.delete(&path)).await {
            Err(BackupError::Missing(_)) => Ok(()),
            other => other,
        }
    }
}

/// An S3 client from the config, falling back to the usual AWS variables.
/// Retries are few and short: the shipper retries on its own schedule, and
/// a restore should fail fast with the reason rather than wait minutes.
fn s3(bucket: &str, config: &BackupConfig) -> AmazonS3Builder {
    let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
    if std::env::var_os("AWS_REGION").is_none() && std::env::var_os("AWS_DEFAULT_REGION").is_none()
    {
        builder = builder.with_region("us-east-1");
    }
    if let Some(endpoint) = &config.s3_endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(region) = &config.s3_region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &config.s3_access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &config.s3_secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(allow) = config.s3_allow_http {
        builder = builder.with_allow_http(allow);
    }
    let retry = RetryConfig {
        max_retries: 2,
        retry_timeout: config.timeout,
        ..RetryConfig::default()
    };
    // Set key by key: `with_client_options` would replace what the
    // environment set (AWS_ALLOW_HTTP among it).
    let timeout = humantime::format_duration(config.timeout).to_string();
    builder
        .with_retry(retry)
        .with_config(AmazonS3ConfigKey::Client(ClientConfigKey::Timeout), timeout)
        .with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "5s",
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_backup_urls() {
        assert_eq!(
            Location::parse("file:///var/backups").unwrap(),
            Location::Dir("/var/backups".into())
        );
        assert_eq!(
            Location::parse("s3://bucket/a/b/").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: "a/b".into()
            }
        );
        assert_eq!(
            Location::parse("s3://bucket").unwrap(),
            Location::S3 {
                bucket: "bucket".into(),
                prefix: String::new()
            }
        );
        for bad in ["file://relative", "s3://", "http://x", "/tmp/x"] {
            assert!(Location::parse(bad).is_err(), "{bad}");
        }
    }

    #[tokio::test]
    async fn a_directory_store_round_trips_and_names_missing_objects() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("file://{}", dir.path().display());
        let store = Store::open(&url, &BackupConfig::default()).unwrap();
        store
            .put("n1/segments/1.seg", Bytes::from_static(b"abc"))
            .await
            .unwrap();
        assert_eq!(&store.get("n1/segments/1.seg").await.unwrap()[..], b"abc");
        let listed = store.list("n1/segments").await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!((listed[0].name.as_str(), listed[0].size), ("1.seg", 3));
        assert_eq!(store.list_dirs("").await.unwrap(), vec!["n1".to_string()]);
        match store.get("n1/segments/2.seg").await {
            Err(BackupError::Missing(object)) => assert!(object.ends_with("n1/segments/2.seg")),
            other => panic!("expected Missing, got {other:?}"),
        }
        store.delete("n1/segments/1.seg").await.unwrap();
        store.delete("n1/segments/1.seg").await.unwrap();
        assert!(store.list("n1/segments").await.unwrap().is_empty());
    }
}
