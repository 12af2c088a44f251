//! Throwaway `nats-server` processes with JetStream, on ephemeral loopback ports: one node, or a
//! three-node cluster. Each has its own store directory; dropping one kills its processes.

use std::{
    net::TcpListener,
    path::PathBuf,
    process::Stdio,
    time::{Duration, Instant},
};

use async_nats::jetstream::{ErrorCode, context::GetStreamErrorKind};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// How long a node or a cluster may take to be ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// Extra settings of a node's configuration file (authentication, TLS), as written there.
#[derive(Debug, Clone, Default)]
pub struct NodeSettings {
    /// Lines added at the top level of the configuration.
    pub extra: String,
    /// `nats://` or `tls://`.
    pub scheme: &'static str,
}

/// One `nats-server` process.
pub struct NatsNode {
    pub name: String,
    pub port: u16,
    config: PathBuf,
    child: Option<Child>,
    scheme: &'static str,
    _dir: std::sync::Arc<TempDir>,
}

impl NatsNode {
    /// The client URL.
    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme, self.port)
    }

    fn spawn(&mut self) {
        let child = Command::new("nats-server")
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect(
                "cannot run nats-server; install it (Debian: apt-get install nats-server), as .ci/run does",
            );
        self.child = Some(child);
    }

    /// Kills the node with SIGKILL and waits until it is gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts the node again on the same ports and store directory.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "{} is running", self.name);
        self.spawn();
        wait_for_port(self.port).await;
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

/// A single JetStream node.
pub struct NatsServer {
    pub node: NatsNode,
}

impl NatsServer {
    pub async fn start() -> Self {
        Self::start_with(NodeSettings::default()).await
    }

    pub async fn start_with(settings: NodeSettings) -> Self {
        let mut nodes = start_nodes(1, &settings).await;
        let node = nodes.remove(0);
        wait_for_jetstream(&[node.url()], &settings).await;
        Self { node }
    }

    pub fn url(&self) -> String {
        self.node.url()
    }
}

/// A three-node JetStream cluster.
pub struct NatsCluster {
    pub nodes: Vec<NatsNode>,
}

impl NatsCluster {
    pub async fn start() -> Self {
        let nodes = start_nodes(3, &NodeSettings::default()).await;
        let urls: Vec<_> = nodes.iter().map(NatsNode::url).collect();
        wait_for_jetstream(&urls, &NodeSettings::default()).await;
        Self { nodes }
    }

    /// Every node's URL, comma-separated, as `--nats-url` takes them.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(NatsNode::url)
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn node_mut(&mut self, name: &str) -> &mut NatsNode {
        self.nodes
            .iter_mut()
            .find(|node| node.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The name of the node that leads `stream` now, asked through any running node.
    pub async fn stream_leader(&self, stream: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            for node in self.nodes.iter().filter(|node| node.is_running()) {
                if let Ok(client) = async_nats::connect(node.url()).await {
                    let jetstream = async_nats::jetstream::new(client);
                    if let Ok(mut stream) = jetstream.get_stream(stream).await
                        && let Ok(info) = stream.info().await
                        && let Some(leader) = info
                            .cluster
                            .as_ref()
                            .and_then(|cluster| cluster.leader.clone())
                        && !leader.is_empty()
                    {
                        return leader;
                    }
                }
            }
            assert!(Instant::now() < deadline, "stream {stream} has no leader");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Ports no one listens on now, all different.
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<_> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().unwrap().port())
        .collect()
}

async fn start_nodes(count: usize, settings: &NodeSettings) -> Vec<NatsNode> {
    let dir = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let ports = free_ports(count * 2);
    let (client_ports, cluster_ports) = ports.split_at(count);
    let routes: Vec<_> = cluster_ports
        .iter()
        .map(|port| format!("nats://127.0.0.1:{port}"))
        .collect();
    let scheme = if settings.scheme.is_empty() {
        "nats"
    } else {
        settings.scheme
    };
    let mut nodes = Vec::new();
    for index in 0..count {
        let name = format!("n{}", index + 1);
        let store = dir.path().join(&name);
        let cluster = if count > 1 {
            format!(
                "cluster {{\n  name: test\n  listen: 127.0.0.1:{}\n  routes: [{}]\n}}\n",
                cluster_ports[index],
                routes.join(", ")
            )
        } else {
            String::new()
        };
        let config = dir.path().join(format!("{name}.conf"));
        std::fs::write(
            &config,
            format!(
                "server_name: {name}\nlisten: 127.0.0.1:{port}\njetstream {{\n  store_dir: {store:?}\n}}\n{cluster}{extra}\n",
                port = client_ports[index],
                extra = settings.extra,
            ),
        )
        .unwrap();
        let mut node = NatsNode {
            name,
            port: client_ports[index],
            config,
            child: None,
            scheme,
            _dir: dir.clone(),
        };
        node.spawn();
        nodes.push(node);
    }
    for node in &nodes {
        wait_for_port(node.port).await;
    }
    nodes
}

async fn wait_for_port(port: u16) {
    let deadline = Instant::now() + START_TIMEOUT;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(
            Instant::now() < deadline,
            "nats-server on {port} did not start"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits until JetStream answers (in a cluster: until it has a meta leader).
async fn wait_for_jetstream(urls: &[String], settings: &NodeSettings) {
    if !settings.extra.is_empty() {
        // Authenticated or TLS nodes: the test connects through the gateway, which waits.
        return;
    }
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last_error;
    loop {
        match async_nats::connect(urls).await {
            Ok(client) => {
                // Any answer about a stream, even "not found", means JetStream serves requests.
                let jetstream = async_nats::jetstream::new(client);
                match jetstream.get_stream("READINESS_PROBE").await {
                    Ok(_) => return,
                    Err(error) => match error.kind() {
                        GetStreamErrorKind::JetStream(inner)
                            if inner.error_code() == ErrorCode::STREAM_NOT_FOUND =>
                        {
                            return;
                        }
                        _ => last_error = format!("{error:?}"),
                    },
                }
            }
            Err(error) => last_error = format!("{error:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "JetStream did not become ready: {last_error}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
