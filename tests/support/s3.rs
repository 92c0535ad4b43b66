//! In-process S3-protocol test server: one bucket held in memory, SigV4 authentication, path-style requests.
//!
//! Built on `s3s`; it answers PutObject (with `If-Match` / `If-None-Match` conditional writes), GetObject
//! (ranges and conditional reads), HeadObject, DeleteObject(s), ListObjectsV2 and HeadBucket. Every other
//! operation answers `501 NotImplemented`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::dto::{
    CommonPrefix, DeleteObjectInput, DeleteObjectOutput, DeleteObjectsInput, DeleteObjectsOutput,
    DeletedObject, ETag, ETagCondition, GetObjectInput, GetObjectOutput, HeadBucketInput, HeadBucketOutput,
    HeadObjectInput, HeadObjectOutput, ListObjectsV2Input, ListObjectsV2Output, PutObjectInput,
    PutObjectOutput, StreamingBlob, Timestamp,
};
use s3s::service::{S3Service, S3ServiceBuilder};
use s3s::{S3, S3Error, S3ErrorCode, S3Request, S3Response, S3Result, s3_error};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;

/// An in-memory S3 server on `127.0.0.1`, running on its own tokio runtime.
pub struct S3Server {
    store: Arc<Store>,
    service: S3Service,
    addr: SocketAddr,
    runtime: Option<Runtime>,
    serving: Mutex<Option<Serving>>,
}

impl S3Server {
    /// Starts a server on 127.0.0.1 with a random free port (its own tokio runtime on background threads),
    /// one bucket named `bucket` already created, and SigV4 authentication with this access key and secret.
    ///
    /// Callable from sync or async code (it never blocks on a runtime).
    pub fn start(bucket: &str, access_key: &str, secret_key: &str) -> S3Server {
        let store = Arc::new(Store {
            bucket: bucket.to_owned(),
            objects: Mutex::new(BTreeMap::new()),
            writes: AtomicU64::new(0),
        });
        let mut builder = S3ServiceBuilder::new(Backend(store.clone()));
        builder.set_auth(SimpleAuth::from_single(access_key, secret_key));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3-test-server")
            .enable_all()
            .build()
            .expect("build the S3 test server runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind the S3 test server");
        let addr = listener.local_addr().expect("S3 test server address");
        let mut server = S3Server {
            store,
            service: builder.build(),
            addr,
            runtime: Some(runtime),
            serving: Mutex::new(None),
        };
        *server.serving.get_mut().unwrap_or_else(PoisonError::into_inner) = Some(server.serve(listener));
        server
    }

    /// `"http://127.0.0.1:PORT"`
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops answering: closes the listener and every open connection (so pooled keep-alive connections die
    /// too), keeping the stored objects. Returns once the port refuses connections. No-op when paused.
    pub fn pause(&self) {
        let serving = lock(&self.serving).take();
        if let Some(serving) = serving {
            drop(serving.stop);
            // The accept task drops the listener, aborts its connections and then drops `done`.
            let _ = serving.done.recv();
        }
    }

    /// Listens again on the same port with the same objects. No-op when already serving.
    pub fn resume(&self) {
        let mut serving = lock(&self.serving);
        if serving.is_none() {
            // std sets SO_REUSEADDR on Unix: connections of the previous run in TIME_WAIT do not block the bind.
            let listener = std::net::TcpListener::bind(self.addr).expect("re-bind the S3 test server port");
            *serving = Some(self.serve(listener));
        }
    }

    /// Every key of the bucket, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.store.lock().keys().cloned().collect()
    }

    /// One object's bytes, `None` when the key is missing.
    pub fn object(&self, key: &str) -> Option<Vec<u8>> {
        self.store.lock().get(key).map(|o| o.data.to_vec())
    }

    /// Replaces (or creates) an object's bytes behind the client's back. Like any write it gets a new ETag
    /// and Last-Modified.
    pub fn tamper(&self, key: &str, bytes: &[u8]) {
        let object = self.store.new_object(Bytes::copy_from_slice(bytes));
        self.store.lock().insert(key.to_owned(), object);
    }

    fn serve(&self, listener: std::net::TcpListener) -> Serving {
        listener.set_nonblocking(true).expect("non-blocking listener");
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel::<()>();
        let service = self.service.clone();
        let runtime = self.runtime.as_ref().expect("runtime present until drop");
        runtime.spawn(async move {
            let _done = done_tx;
            let listener = tokio::net::TcpListener::from_std(listener).expect("register the listener");
            let http = ConnBuilder::new(TokioExecutor::new());
            let mut connections = tokio::task::JoinSet::new();
            loop {
                tokio::select! {
                    _ = &mut stopped => break,
                    accepted = listener.accept() => {
                        let Ok((stream, _)) = accepted else { continue };
                        let connection = http.serve_connection(TokioIo::new(stream), service.clone()).into_owned();
                        connections.spawn(async move {
                            let _ = connection.await;
                        });
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
            drop(listener);
            connections.shutdown().await;
        });
        Serving { stop, done }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.pause();
        if let Some(runtime) = self.runtime.take() {
            // Does not block, so dropping the server inside an async test is fine.
            runtime.shutdown_background();
        }
    }
}

struct Serving {
    stop: oneshot::Sender<()>,
    done: mpsc::Receiver<()>,
}

struct Object {
    data: Bytes,
    etag: String,
    last_modified: SystemTime,
}

impl Object {
    fn etag(&self) -> Option<ETag> {
        Some(ETag::Strong(self.etag.clone()))
    }

    fn last_modified(&self) -> Option<Timestamp> {
        Some(Timestamp::from(self.last_modified))
    }

    fn len(&self) -> i64 {
        self.data.len() as i64
    }
}

struct Store {
    bucket: String,
    objects: Mutex<BTreeMap<String, Object>>,
    writes: AtomicU64,
}

impl Store {
    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Object>> {
        lock(&self.objects)
    }

    fn check_bucket(&self, bucket: &str) -> S3Result<()> {
        if bucket == self.bucket { Ok(()) } else { Err(s3_error!(NoSuchBucket, "no bucket named {bucket}")) }
    }

    /// ETags are unique per write (a counter), not an MD5 of the content. Last-Modified has whole seconds,
    /// like S3, so listings and HEAD agree.
    fn new_object(&self, data: Bytes) -> Object {
        let n = self.writes.fetch_add(1, Ordering::Relaxed) + 1;
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        Object { data, etag: format!("{n:032x}"), last_modified: UNIX_EPOCH + Duration::from_secs(secs) }
    }
}

type Reply<T> = S3Result<S3Response<T>>;
type Condition<'a> = Option<&'a ETagCondition>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn matches(condition: &ETagCondition, object: &Object) -> bool {
    match condition {
        ETagCondition::Any => true,
        ETagCondition::ETag(etag) => etag.value() == object.etag,
    }
}

/// `If-Match` / `If-None-Match` on a write: any failure is 412 PreconditionFailed.
fn check_write(object: Option<&Object>, if_match: Condition<'_>, if_none: Condition<'_>) -> S3Result<()> {
    if let Some(condition) = if_match
        && !object.is_some_and(|o| matches(condition, o))
    {
        return Err(s3_error!(PreconditionFailed, "If-Match failed"));
    }
    if let (Some(condition), Some(object)) = (if_none, object)
        && matches(condition, object)
    {
        return Err(s3_error!(PreconditionFailed, "If-None-Match failed: the object exists"));
    }
    Ok(())
}

/// `If-Match` / `If-None-Match` on a read of an existing object: 412 and 304 respectively.
fn check_read(object: &Object, if_match: Condition<'_>, if_none: Condition<'_>) -> S3Result<()> {
    if if_match.is_some_and(|c| !matches(c, object)) {
        return Err(s3_error!(PreconditionFailed, "If-Match failed"));
    }
    if if_none.is_some_and(|c| matches(c, object)) {
        return Err(S3Error::new(S3ErrorCode::NotModified));
    }
    Ok(())
}

struct Backend(Arc<Store>);

#[async_trait::async_trait]
impl S3 for Backend {
    async fn put_object(&self, req: S3Request<PutObjectInput>) -> Reply<PutObjectOutput> {
        let input = req.input;
        self.0.check_bucket(&input.bucket)?;
        let data = match input.body {
            Some(blob) => s3s::Body::from(blob).store_all_limited(usize::MAX).await.map_err(|e| {
                let mut err = S3Error::with_message(S3ErrorCode::IncompleteBody, "could not read the body");
                err.set_source(e);
                err
            })?,
            None => Bytes::new(),
        };
        let mut objects = self.0.lock();
        check_write(objects.get(&input.key), input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let object = self.0.new_object(data);
        let output = PutObjectOutput { e_tag: object.etag(), size: Some(object.len()), ..Default::default() };
        objects.insert(input.key, object);
        Ok(S3Response::new(output))
    }

    async fn get_object(&self, req: S3Request<GetObjectInput>) -> Reply<GetObjectOutput> {
        let input = req.input;
        self.0.check_bucket(&input.bucket)?;
        let objects = self.0.lock();
        let object = objects.get(&input.key).ok_or_else(|| s3_error!(NoSuchKey))?;
        check_read(object, input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let total = object.data.len() as u64;
        let (data, content_range) = match input.range {
            Some(range) => {
                let r = range.check(total)?;
                let header = format!("bytes {}-{}/{total}", r.start, r.end - 1);
                (object.data.slice(r.start as usize..r.end as usize), Some(header))
            }
            None => (object.data.clone(), None),
        };
        let output = GetObjectOutput {
            accept_ranges: Some("bytes".to_owned()),
            content_length: Some(data.len() as i64),
            content_range,
            body: Some(StreamingBlob::from(s3s::Body::from(data))),
            e_tag: object.etag(),
            last_modified: object.last_modified(),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn head_object(&self, req: S3Request<HeadObjectInput>) -> Reply<HeadObjectOutput> {
        let input = req.input;
        self.0.check_bucket(&input.bucket)?;
        let objects = self.0.lock();
        let object = objects.get(&input.key).ok_or_else(|| s3_error!(NoSuchKey))?;
        check_read(object, input.if_match.as_ref(), input.if_none_match.as_ref())?;
        let output = HeadObjectOutput {
            accept_ranges: Some("bytes".to_owned()),
            content_length: Some(object.len()),
            e_tag: object.etag(),
            last_modified: object.last_modified(),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }

    async fn delete_object(&self, req: S3Request<DeleteObjectInput>) -> Reply<DeleteObjectOutput> {
        self.0.check_bucket(&req.input.bucket)?;
        self.0.lock().remove(&req.input.key);
        Ok(S3Response::new(DeleteObjectOutput::default()))
    }

    /// Multi-object delete (`POST /bucket?delete`), which is what object_store's `delete` sends.
    async fn delete_objects(&self, req: S3Request<DeleteObjectsInput>) -> Reply<DeleteObjectsOutput> {
        self.0.check_bucket(&req.input.bucket)?;
        let mut objects = self.0.lock();
        let deleted = (req.input.delete.objects.into_iter())
            .map(|id| {
                objects.remove(&id.key);
                DeletedObject { key: Some(id.key), ..Default::default() }
            })
            .collect();
        Ok(S3Response::new(DeleteObjectsOutput { deleted: Some(deleted), ..Default::default() }))
    }

    async fn head_bucket(&self, req: S3Request<HeadBucketInput>) -> Reply<HeadBucketOutput> {
        self.0.check_bucket(&req.input.bucket)?;
        Ok(S3Response::new(HeadBucketOutput::default()))
    }

    async fn list_objects_v2(&self, req: S3Request<ListObjectsV2Input>) -> Reply<ListObjectsV2Output> {
        let input = req.input;
        self.0.check_bucket(&input.bucket)?;
        let prefix = input.prefix.clone().unwrap_or_default();
        let delimiter = input.delimiter.clone().filter(|d| !d.is_empty());
        let max_keys = input.max_keys.unwrap_or(1000).clamp(0, 1000) as usize;
        // The continuation token is the last key or common prefix returned; it wins over start-after.
        let after = input.continuation_token.as_deref().or(input.start_after.as_deref());
        // Resuming after a common prefix skips every key under it.
        let skip_under = after.filter(|a| {
            delimiter
                .as_deref()
                .is_some_and(|d| a.strip_prefix(prefix.as_str()).is_some_and(|rest| rest.contains(d)))
        });
        let lower = match after {
            Some(a) if a >= prefix.as_str() => Bound::Excluded(a),
            _ => Bound::Included(prefix.as_str()),
        };

        let objects = self.0.lock();
        let (mut contents, mut common_prefixes) = (Vec::new(), Vec::<CommonPrefix>::new());
        let (mut count, mut last, mut truncated) = (0, None::<String>, false);
        for (key, object) in objects.range::<str, _>((lower, Bound::Unbounded)) {
            if !key.starts_with(&prefix) {
                break;
            }
            if skip_under.is_some_and(|s| key.starts_with(s)) {
                continue;
            }
            let common = delimiter.as_deref().and_then(|d| {
                let end = prefix.len() + key[prefix.len()..].find(d)? + d.len();
                Some(key[..end].to_owned())
            });
            if common.is_some() && common == last {
                continue;
            }
            if count == max_keys {
                truncated = true;
                break;
            }
            count += 1;
            match common {
                Some(p) => {
                    common_prefixes.push(CommonPrefix { prefix: Some(p.clone()) });
                    last = Some(p);
                }
                None => {
                    contents.push(s3s::dto::Object {
                        key: Some(key.clone()),
                        size: Some(object.len()),
                        e_tag: object.etag(),
                        last_modified: object.last_modified(),
                        ..Default::default()
                    });
                    last = Some(key.clone());
                }
            }
        }
        let next_continuation_token = if truncated { last } else { None };
        let output = ListObjectsV2Output {
            name: Some(self.0.bucket.clone()),
            prefix: Some(prefix),
            delimiter,
            max_keys: Some(max_keys as i32),
            key_count: Some(count as i32),
            continuation_token: input.continuation_token,
            start_after: input.start_after,
            is_truncated: Some(next_continuation_token.is_some()),
            next_continuation_token,
            contents: Some(contents),
            common_prefixes: Some(common_prefixes),
            ..Default::default()
        };
        Ok(S3Response::new(output))
    }
}
