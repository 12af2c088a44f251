//! HTTP/1.1 keep-alive load generation: closed loop (fixed connections, as fast as answers
//! come) and open loop (fixed offered rate).

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::{Request, StatusCode, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

/// Builds the `n`th request body of a run.
pub type BodyFn = Arc<dyn Fn(u64) -> String + Send + Sync>;

/// What to send.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    pub authorization: Option<String>,
    pub body: BodyFn,
}

/// Outcome of a load run.
pub struct LoadResult {
    pub ok: u64,
    pub failed: u64,
    /// The `n` of every request answered `200` (open loop only), for checks that need to know
    /// which requests were acknowledged, not only how many.
    pub acknowledged: Vec<u64>,
    pub elapsed: Duration,
    /// Latency in microseconds.
    pub latency: Histogram<u64>,
}

impl LoadResult {
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds")
}

struct Connection {
    sender: http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    async fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        let (sender, connection) = http1::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(connection);
        Self { sender }
    }

    async fn send(&mut self, target: &Target, n: u64) -> bool {
        let mut request = Request::post(target.path.as_str())
            .header("host", "bench")
            .header("content-type", "application/json");
        if let Some(authorization) = &target.authorization {
            request = request.header("authorization", authorization.as_str());
        }
        let request = request
            .body(Full::new(Bytes::from((target.body)(n))))
            .expect("request");
        if self.sender.ready().await.is_err() {
            return false;
        }
        match self.sender.send_request(request).await {
            Ok(response) => {
                let status = response.status();
                let drained = response.into_body().collect().await.is_ok();
                drained && status == StatusCode::OK
            }
            Err(_) => false,
        }
    }
}

/// `connections` keep-alive connections, each sending its next request as soon as the previous
/// one is answered, for `duration`.
pub async fn closed_loop(target: Target, connections: usize, duration: Duration) -> LoadResult {
    let started = Instant::now();
    let deadline = started + duration;
    let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let target = target.clone();
            let counter = counter.clone();
            tokio::spawn(async move {
                let mut connection = Connection::open(target.addr).await;
                let mut latency = histogram();
                let (mut ok, mut failed) = (0, 0);
                while Instant::now() < deadline {
                    let n = counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let sent = Instant::now();
                    if connection.send(&target, n).await {
                        ok += 1;
                        latency.saturating_record(sent.elapsed().as_micros() as u64);
                    } else {
                        failed += 1;
                        connection = Connection::open(target.addr).await;
                    }
                }
                (ok, failed, latency)
            })
        })
        .collect();
    let mut result = LoadResult {
        ok: 0,
        failed: 0,
        acknowledged: Vec::new(),
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for task in tasks {
        let (ok, failed, latency) = task.await.expect("load task");
        result.ok += ok;
        result.failed += failed;
        result.latency.add(latency).expect("merge histograms");
    }
    result.elapsed = started.elapsed();
    result
}

/// Offers `rate` requests per second for `duration` over `connections` connections, whatever the
/// answers' pace (requests queue per connection when it falls behind).
pub async fn open_loop(
    target: Target,
    connections: usize,
    rate: u64,
    duration: Duration,
) -> LoadResult {
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..connections)
        .map(|_| tokio::sync::mpsc::unbounded_channel::<(u64, Instant)>())
        .unzip();
    let workers: Vec<_> = receivers
        .into_iter()
        .map(|mut jobs| {
            let target = target.clone();
            tokio::spawn(async move {
                let mut connection = Connection::open(target.addr).await;
                let mut latency = histogram();
                let (mut ok, mut failed) = (0u64, 0u64);
                let mut acknowledged = Vec::new();
                while let Some((n, scheduled)) = jobs.recv().await {
                    if connection.send(&target, n).await {
                        ok += 1;
                        acknowledged.push(n);
                        // Measured from the scheduled time: no coordinated omission.
                        latency.saturating_record(scheduled.elapsed().as_micros() as u64);
                    } else {
                        failed += 1;
                        connection = Connection::open(target.addr).await;
                    }
                }
                (ok, failed, acknowledged, latency)
            })
        })
        .collect();
    let started = Instant::now();
    let total = rate * duration.as_secs().max(1);
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    for n in 0..total {
        let scheduled = started + interval.mul_f64(n as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let _ = senders[(n as usize) % connections].send((n, scheduled));
    }
    drop(senders);
    let mut result = LoadResult {
        ok: 0,
        failed: 0,
        acknowledged: Vec::new(),
        elapsed: Duration::ZERO,
        latency: histogram(),
    };
    for worker in workers {
        let (ok, failed, acknowledged, latency) = worker.await.expect("load worker");
        result.ok += ok;
        result.failed += failed;
        result.acknowledged.extend(acknowledged);
        result.latency.add(latency).expect("merge histograms");
    }
    result.elapsed = started.elapsed();
    result
}
