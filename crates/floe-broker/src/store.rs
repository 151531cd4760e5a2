//! Object store layers, in the SlateDB manner: small wrappers around `dyn ObjectStore`.
//! - [`InstrumentedStore`] counts requests by kind for `/metrics` and benchmarks.
//! - [`FaultStore`] fails requests on demand, for fault tests.

use std::fmt;
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, Result,
};
use prometheus::IntCounterVec;

#[derive(Debug, thiserror::Error)]
pub enum StoreUrlError {
    #[error(
        "bucket url {0:?} is not supported (use file:///PATH, s3://BUCKET/PREFIX or memory://)"
    )]
    Unsupported(String),
    #[error("cannot create bucket folder {0}: {1}")]
    Folder(String, std::io::Error),
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
}

/// Open the object store named by a URL: `file:///abs/path` (fsync on every write) or
/// `memory://` (tests only: nothing survives the process).
pub fn open_store(url: &str) -> Result<Arc<dyn ObjectStore>, StoreUrlError> {
    if let Some(path) = url.strip_prefix("file://") {
        if path.is_empty() {
            return Err(StoreUrlError::Unsupported(url.to_string()));
        }
        std::fs::create_dir_all(path).map_err(|e| StoreUrlError::Folder(path.to_string(), e))?;
        // with_fsync(true): the file and its directory are synced before a put returns,
        // so an acked record survives power loss.
        let fs = object_store::local::LocalFileSystem::new_with_prefix(path)?.with_fsync(true);
        return Ok(Arc::new(fs));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        return open_s3(url, rest);
    }
    if url == "memory://" || url == "memory:///" {
        return Ok(Arc::new(object_store::memory::InMemory::new()));
    }
    Err(StoreUrlError::Unsupported(url.to_string()))
}

/// `s3://bucket/prefix` with the standard AWS environment: `AWS_ENDPOINT_URL` (an `http://`
/// endpoint is allowed), `AWS_REGION` (default us-east-1), `AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`. Path-style addressing; conditional writes
/// (`If-None-Match`) for create-only segment PUTs. Retries 5xx and timeouts with backoff a
/// bounded number of times, then the produce fails with 503.
fn open_s3(url: &str, rest: &str) -> Result<Arc<dyn ObjectStore>, StoreUrlError> {
    use object_store::aws::AmazonS3Builder;
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(StoreUrlError::Unsupported(url.to_string()));
    }
    let endpoint = std::env::var("AWS_ENDPOINT_URL_S3")
        .or_else(|_| std::env::var("AWS_ENDPOINT_URL"))
        .ok();
    let mut b = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false)
        .with_retry(object_store::RetryConfig {
            backoff: object_store::BackoffConfig::default(),
            max_retries: 4,
            retry_timeout: std::time::Duration::from_secs(15),
        });
    if let Some(ep) = &endpoint {
        b = b
            .with_endpoint(ep)
            .with_allow_http(ep.starts_with("http://"));
    }
    if std::env::var("AWS_REGION").is_err() && std::env::var("AWS_DEFAULT_REGION").is_err() {
        b = b.with_region("us-east-1");
    }
    let s3: Arc<dyn ObjectStore> = Arc::new(b.build()?);
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        return Ok(s3);
    }
    Ok(Arc::new(object_store::prefix::PrefixStore::new(s3, prefix)))
}

/// Counts object-store requests by operation (`put`, `get`, `list`, `delete`, `copy`).
#[derive(Debug)]
pub struct InstrumentedStore {
    inner: Arc<dyn ObjectStore>,
    requests: IntCounterVec,
}

impl InstrumentedStore {
    pub fn new(inner: Arc<dyn ObjectStore>, requests: IntCounterVec) -> Self {
        Self { inner, requests }
    }
    fn count(&self, op: &str) {
        self.requests.with_label_values(&[op]).inc();
    }
}

impl fmt::Display for InstrumentedStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Instrumented({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for InstrumentedStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.count("put");
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.count("put");
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.count("get");
        self.inner.get_opts(location, options).await
    }
    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> Result<Vec<Bytes>> {
        self.requests
            .with_label_values(&["get"])
            .inc_by(ranges.len() as u64);
        self.inner.get_ranges(location, ranges).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        let c = self.requests.with_label_values(&["delete"]);
        self.inner.delete_stream(
            locations
                .map(move |l| {
                    c.inc();
                    l
                })
                .boxed(),
        )
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        self.count("list");
        self.inner.list(prefix)
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.count("list");
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.count("copy");
        self.inner.copy_opts(from, to, options).await
    }
}

/// Fails every request while switched on, or hangs every request while `hang` is on
/// (a stopped server: no answer at all); for fault-injection tests.
#[derive(Debug, Clone)]
pub struct FaultStore {
    inner: Arc<dyn ObjectStore>,
    failing: Arc<AtomicBool>,
    hanging: Arc<AtomicBool>,
}

/// Wait while `flag` is on (polling: this is for tests only).
pub(crate) async fn wait_while(flag: &AtomicBool) {
    while flag.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

impl FaultStore {
    pub fn new(inner: Arc<dyn ObjectStore>) -> Self {
        Self {
            inner,
            failing: Arc::new(AtomicBool::new(false)),
            hanging: Arc::new(AtomicBool::new(false)),
        }
    }
    /// A handle that switches failures on and off.
    pub fn switch(&self) -> Arc<AtomicBool> {
        self.failing.clone()
    }
    /// A handle that makes every request hang (until switched off).
    pub fn hang_switch(&self) -> Arc<AtomicBool> {
        self.hanging.clone()
    }
    async fn check(&self) -> Result<()> {
        wait_while(&self.hanging).await;
        self.check_failing()
    }
    fn check_failing(&self) -> Result<()> {
        if self.failing.load(Ordering::SeqCst) {
            return Err(object_store::Error::Generic {
                store: "fault",
                source: "injected fault: object store unavailable".into(),
            });
        }
        Ok(())
    }
}

impl fmt::Display for FaultStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fault({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for FaultStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> Result<PutResult> {
        self.check().await?;
        self.inner.put_opts(location, payload, opts).await
    }
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> Result<Box<dyn MultipartUpload>> {
        self.check().await?;
        self.inner.put_multipart_opts(location, opts).await
    }
    async fn get_opts(&self, location: &Path, options: GetOptions) -> Result<GetResult> {
        self.check().await?;
        self.inner.get_opts(location, options).await
    }
    fn delete_stream(
        &self,
        locations: BoxStream<'static, Result<Path>>,
    ) -> BoxStream<'static, Result<Path>> {
        if let Err(e) = self.check_failing() {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let (inner, hanging) = (self.inner.clone(), self.hanging.clone());
        let mut locations = Some(locations);
        futures::stream::once(async move { wait_while(&hanging).await })
            .flat_map(move |()| {
                inner.delete_stream(
                    locations
                        .take()
                        .unwrap_or_else(|| futures::stream::empty().boxed()),
                )
            })
            .boxed()
    }
    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, Result<ObjectMeta>> {
        if let Err(e) = self.check_failing() {
            return futures::stream::once(async move { Err(e) }).boxed();
        }
        let (inner, hanging) = (self.inner.clone(), self.hanging.clone());
        let prefix = prefix.cloned();
        futures::stream::once(async move { wait_while(&hanging).await })
            .flat_map(move |()| inner.list(prefix.as_ref()))
            .boxed()
    }
    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> Result<ListResult> {
        self.check().await?;
        self.inner.list_with_delimiter(prefix).await
    }
    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> Result<()> {
        self.check().await?;
        self.inner.copy_opts(from, to, options).await
    }
}
